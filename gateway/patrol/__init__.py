"""Patrol mode (轮巡): visit thousands of cameras in turn, one picture per visit, rules across visits."""
