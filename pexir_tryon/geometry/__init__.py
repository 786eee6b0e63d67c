"""Stage 1: person geometry (transient types + MediaPipe detector)."""

from .types import HAND_LANDMARKS, Landmark, PersonGeometry

__all__ = ["GeometryDetector", "HAND_LANDMARKS", "Landmark", "PersonGeometry"]


def __getattr__(name: str):  # the detector imports mediapipe; load it only when asked for
    if name == "GeometryDetector":
        from .detector import GeometryDetector

        return GeometryDetector
    raise AttributeError(name)
