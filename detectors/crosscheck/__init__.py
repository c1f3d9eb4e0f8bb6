"""Rules that join observations of different sources (video detections with fleet positions)."""
