"""Person geometry: a transient, in-memory result of stage 1.

Privacy rule 1 (DESIGN.md): geometry is never written anywhere. This type has no save, no
serialisation helper and a repr without coordinates; it travels between Ray deployments only in
memory (object spilling is off for those processes) and is dropped after the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Landmark(IntEnum):
    """MediaPipe pose landmark indices we use (the person's left/right, not the image's)."""

    NOSE = 0
    LEFT_EYE = 2
    RIGHT_EYE = 5
    LEFT_EAR = 7
    RIGHT_EAR = 8
    MOUTH_LEFT = 9
    MOUTH_RIGHT = 10
    LEFT_SHOULDER = 11
    RIGHT_SHOULDER = 12
    LEFT_ELBOW = 13
    RIGHT_ELBOW = 14
    LEFT_WRIST = 15
    RIGHT_WRIST = 16
    LEFT_PINKY = 17
    RIGHT_PINKY = 18
    LEFT_INDEX = 19
    RIGHT_INDEX = 20
    LEFT_THUMB = 21
    RIGHT_THUMB = 22
    LEFT_HIP = 23
    RIGHT_HIP = 24
    LEFT_KNEE = 25
    RIGHT_KNEE = 26
    LEFT_ANKLE = 27
    RIGHT_ANKLE = 28


HAND_LANDMARKS = {
    "left": (Landmark.LEFT_WRIST, Landmark.LEFT_PINKY, Landmark.LEFT_INDEX, Landmark.LEFT_THUMB),
    "right": (Landmark.RIGHT_WRIST, Landmark.RIGHT_PINKY, Landmark.RIGHT_INDEX, Landmark.RIGHT_THUMB),
}


@dataclass(frozen=True, repr=False, eq=False)
class PersonGeometry:
    """Pose, face placement and a coarse person mask for one photo, in that photo's pixels.

    - `landmarks`: (33, 3) float32 of x, y, visibility; a landmark counts only when `visible()`.
    - `face_box`: (x0, y0, x1, y1) or None; `face_outline`: (N, 2) polygon of the face oval or None.
    - `face_orientation`: (yaw, pitch, roll) in degrees, or None. Used for placement only.
    - `person_mask`: uint8 0/255 at reduced size (at most `mask_max_side`), to stay small.
    """

    image_size: tuple[int, int]  # (height, width)
    landmarks: np.ndarray
    min_visibility: float
    face_box: tuple[float, float, float, float] | None
    face_outline: np.ndarray | None
    face_orientation: tuple[float, float, float] | None
    person_mask: np.ndarray
    faces_found: int

    def visible(self, index: int) -> bool:
        """True when the landmark is confident and inside the frame (MediaPipe invents positions off-frame)."""
        x, y, visibility = self.landmarks[index]
        height, width = self.image_size
        margin = 0.02 * max(height, width)
        return bool(visibility >= self.min_visibility and -margin <= x <= width + margin and -margin <= y <= height + margin)

    def point(self, index: int) -> np.ndarray:
        return self.landmarks[index, :2].astype(np.float64)

    def all_visible(self, *indices: int) -> bool:
        return all(self.visible(i) for i in indices)

    def person_mask_at(self, height: int, width: int) -> np.ndarray:
        """The person mask scaled to (height, width), uint8 0/255."""
        import cv2

        if self.person_mask.shape == (height, width):
            return self.person_mask
        return cv2.resize(self.person_mask, (width, height), interpolation=cv2.INTER_LINEAR)

    def __repr__(self) -> str:  # never coordinates
        visible = int(sum(self.visible(i) for i in range(len(self.landmarks))))
        return (
            f"PersonGeometry(image_size={self.image_size}, visible_landmarks={visible}, "
            f"face={'yes' if self.face_box else 'no'}, faces_found={self.faces_found})"
        )

    __str__ = __repr__
