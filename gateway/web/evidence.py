"""Evidence files of a case, served only from the evidence folder and only when the case lists them.

The URL names an evidence entry of a case (`/evidence/<case_id>/<name>`), never a path. The file
is the path the case desk recorded, with every symlink resolved (`Path.resolve`), and it must
then lie inside the evidence folder (`cases.evidence_dir`): a link in a case folder pointing at
the case database, or a forged path in a damaged case, is refused like a missing file.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gateway.web.clips import ClipError, ClipIndex, index_mjpeg_avi

# A media type as it may appear in a header: anything else (from a damaged case) is sent as bytes.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+(; *[\w.-]+=[\w.-]+)?")
MAX_CLIP_BYTES = 200 * 1024 * 1024  # clips larger than this are offered for download only
_CLIP_CACHE = 32  # clip indexes kept (a few KB each)


def evidence_name(item: dict[str, Any]) -> str:
    """The name an evidence entry is addressed by in URLs."""
    return str(item.get("name") or Path(str(item.get("path", ""))).name)


def media_type(item: dict[str, Any]) -> str:
    media = str(item.get("media_type", ""))
    return media if _MEDIA_TYPE.fullmatch(media) else "application/octet-stream"


def find_item(case: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((i for i in case.get("evidence", ()) if isinstance(i, dict) and evidence_name(i) == name), None)


class EvidenceStore:
    """Finds the real file of an evidence entry inside `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._clips: OrderedDict[tuple[str, float, int], ClipIndex] = OrderedDict()

    def locate(self, item: dict[str, Any]) -> Path | None:
        """The regular file of `item`, if its real path lies inside the evidence folder; else None."""
        listed = item.get("path")
        if not listed:
            return None
        root = self.root.resolve()
        p = Path(str(listed))
        # The case desk records the path as it wrote it: absolute, or relative to its working folder.
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
        for c in candidates:
            try:
                real = c.resolve()
            except (OSError, RuntimeError):  # a link loop
                continue
            if real.is_relative_to(root) and real.is_file():
                return real
        return None

    def clip_index(self, path: Path) -> ClipIndex:
        """The frame index of an MJPEG AVI (cached by path, mtime and size); ClipError if unusable."""
        st = path.stat()
        key = (str(path), st.st_mtime, st.st_size)
        found = self._clips.get(key)
        if found is None:
            if st.st_size > MAX_CLIP_BYTES:
                raise ClipError(f"clip of {st.st_size} bytes is too large to show")
            found = index_mjpeg_avi(path.read_bytes())
            self._clips[key] = found
            while len(self._clips) > _CLIP_CACHE:
                self._clips.popitem(last=False)
        else:
            self._clips.move_to_end(key)
        return found

    def clip_frame(self, path: Path, index: int) -> bytes | None:
        """JPEG bytes of frame `index`, or None when there is no such frame."""
        clip = self.clip_index(path)
        if not 0 <= index < len(clip.frames):
            return None
        offset, length = clip.frames[index]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
