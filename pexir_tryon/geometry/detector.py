"""Stage 1: person geometry from MediaPipe's bundled legacy solutions (offline, CPU).

Pose (model_complexity=1, the only pose model the wheel ships), face mesh (face box, outline and
orientation — never identity), and selfie segmentation (person mask). The detector rejects
photos it cannot place a garment on with a typed error, before any later stage runs.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from ..config import GeometrySettings, ImageSettings
from ..errors import TryOnError
from ..images import scale_to_max_side
from .types import Landmark, PersonGeometry

log = logging.getLogger(__name__)

# Face-mesh indices: the face oval, and points used for a coarse head orientation.
_FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
              148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
_NOSE_TIP, _CHIN, _FOREHEAD, _CHEEK_R, _CHEEK_L, _EYE_R, _EYE_L = 1, 152, 10, 234, 454, 33, 263


class GeometryDetector:
    """Finds one person's pose, face placement and mask. Load once, call `detect_batch` many times."""

    def __init__(self, settings: GeometrySettings, images: ImageSettings):
        import mediapipe as mp

        self.settings = settings
        self.working_max_side = images.working_max_side
        solutions = mp.solutions
        self._pose = solutions.pose.Pose(
            static_image_mode=True,
            model_complexity=1,
            enable_segmentation=False,
            min_detection_confidence=settings.min_detection_confidence,
        )
        self._fallback_pose = solutions.pose.Pose(
            static_image_mode=True,
            model_complexity=1,
            enable_segmentation=False,
            min_detection_confidence=settings.fallback_detection_confidence,
        )
        self._face_mesh = solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=4,
            refine_landmarks=False,
            min_detection_confidence=settings.min_detection_confidence,
        )
        self._face_detection = solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=settings.min_detection_confidence
        )
        self._segmentation = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        # MediaPipe graphs are not re-entrant; one call at a time per detector.
        self._lock = threading.Lock()

    def close(self) -> None:
        for solution in (self._pose, self._fallback_pose, self._face_mesh, self._face_detection, self._segmentation):
            solution.close()

    def detect_batch(self, items: list) -> list[PersonGeometry | TryOnError]:
        """One result per item, in order; a rejected photo is a TryOnError in its slot.

        An item is a person photo, or a (person photo, garment photo) pair: the garment photo is
        then checked for being worn by a person (a product photo must show the garment alone).
        """
        results: list[PersonGeometry | TryOnError] = []
        for item in items:
            person, garment = item if isinstance(item, tuple) else (item, None)
            try:
                if garment is not None:
                    self.check_garment_photo(garment)
                results.append(self.detect(person))
            except TryOnError as error:
                results.append(error)
        return results

    def check_garment_photo(self, garment: np.ndarray) -> None:
        """Refuse a garment photo that shows a person (a face, or a body with both shoulders)."""
        working, _ = scale_to_max_side(np.ascontiguousarray(garment[..., :3]), self.working_max_side)
        with self._lock:
            faces = self._face_detection.process(working)
            pose = self._pose.process(working)
        has_face = any(d.score[0] >= self.settings.second_face_min_confidence for d in faces.detections or [])
        has_body = pose.pose_landmarks is not None and all(
            pose.pose_landmarks.landmark[i].visibility >= 0.8 for i in (Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER)
        )
        if has_face or has_body:
            raise TryOnError("garment_photo_has_person", "The garment photo shows a person; send a product photo of the garment alone (flat lay or cut-out).")

    def detect(self, image: np.ndarray) -> PersonGeometry:
        height, width = image.shape[:2]
        working, scale = scale_to_max_side(np.ascontiguousarray(image[..., :3]), self.working_max_side)
        with self._lock:
            pose = self._pose.process(working)
            mesh = self._face_mesh.process(working)
            faces = self._face_detection.process(working)
            segmentation = self._segmentation.process(working)

        person_mask = (segmentation.segmentation_mask > 0.5).astype(np.uint8) * 255
        landmarks = None
        if pose.pose_landmarks is not None:
            landmarks = np.array(
                [[lm.x * width, lm.y * height, lm.visibility] for lm in pose.pose_landmarks.landmark], dtype=np.float32
            )
        else:
            landmarks = self._pose_second_pass(working, person_mask, (height, width))
        if landmarks is None:
            raise TryOnError("no_person_detected", "No person was found in the person photo.")
        self._check_single_person(faces, mesh)

        face_box = face_outline = face_orientation = None
        if mesh.multi_face_landmarks:
            main = max(mesh.multi_face_landmarks, key=lambda f: _landmark_span(f.landmark))
            points = np.array([[p.x * width, p.y * height] for p in main.landmark], dtype=np.float32)
            face_outline = points[_FACE_OVAL]
            x0, y0 = face_outline.min(axis=0)
            x1, y1 = face_outline.max(axis=0)
            face_box = (float(x0), float(y0), float(x1), float(y1))
            face_orientation = _orientation(points)

        small_mask, _ = scale_to_max_side(person_mask, self.settings.mask_max_side)
        geometry = PersonGeometry(
            image_size=(height, width),
            landmarks=landmarks,
            min_visibility=self.settings.min_visibility,
            face_box=face_box or _face_box_from_pose(landmarks, self.settings.min_visibility, (height, width)),
            face_outline=face_outline,
            face_orientation=face_orientation,
            person_mask=np.ascontiguousarray(small_mask),
            faces_found=len(mesh.multi_face_landmarks or []),
        )
        self._check_usable(geometry, person_mask)
        return geometry

    def _pose_second_pass(self, working: np.ndarray, person_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
        """The pose detector's person score is marginal on some photos (padded, dark, off-centre).
        When segmentation clearly sees a person, ask again with a lower detection threshold; the
        landmarks are still gated on their own visibility afterwards."""
        if person_mask.mean() / 255.0 < self.settings.fallback_min_person_fraction:
            return None
        with self._lock:
            pose = self._fallback_pose.process(working)
        if pose.pose_landmarks is None:
            return None
        height, width = size
        return np.array([[lm.x * width, lm.y * height, lm.visibility] for lm in pose.pose_landmarks.landmark], dtype=np.float32)

    def _check_single_person(self, faces, mesh) -> None:
        """Several people: either face source (detector, mesh) sees two or more confident faces of
        comparable size. Each source is counted on its own, since both see the main face."""
        detected = [
            d.location_data.relative_bounding_box.width * d.location_data.relative_bounding_box.height
            for d in faces.detections or []
            if d.score[0] >= self.settings.second_face_min_confidence
        ]
        meshed = [_landmark_span(face.landmark) for face in mesh.multi_face_landmarks or []]
        if not detected and not meshed:
            return
        floor = self.settings.second_face_min_relative_area * max(detected + meshed)
        if max(sum(a >= floor for a in detected), sum(a >= floor for a in meshed)) >= 2:
            raise TryOnError("multiple_people", "The person photo shows more than one person; send a photo of one person.")

    def _check_usable(self, geometry: PersonGeometry, person_mask: np.ndarray) -> None:
        height, width = geometry.image_size
        if person_mask.mean() / 255.0 < 0.01:
            raise TryOnError("no_person_detected", "No person was found in the person photo.")
        L, R = Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER
        shoulders = geometry.all_visible(L, R)
        hips = geometry.all_visible(Landmark.LEFT_HIP, Landmark.RIGHT_HIP)
        if not shoulders and not hips:
            raise TryOnError("person_cropped", "The person's shoulders (or hips) are not visible; send a photo showing the body.")
        if shoulders:
            span = np.linalg.norm(geometry.point(L) - geometry.point(R))
        else:
            span = 1.3 * np.linalg.norm(geometry.point(Landmark.LEFT_HIP) - geometry.point(Landmark.RIGHT_HIP))
        if span < self.settings.min_shoulder_fraction * max(height, width):
            # No measurement in the message: geometry never leaves the stage, not even in error text.
            raise TryOnError("person_too_small", "The person fills too little of the photo; crop closer to the person.")
        if shoulders and geometry.faces_found == 0:
            # A frontal person has their left shoulder on the image's right.
            if geometry.point(L)[0] < geometry.point(R)[0] - 0.05 * span:
                raise TryOnError("person_facing_away", "The person seems to face away from the camera; send a front-facing photo.")
            nose_visible = geometry.visible(Landmark.NOSE)
            if not nose_visible:
                raise TryOnError("person_cropped", "The person's head is not visible; send a photo showing the head and shoulders.")


def _landmark_span(points) -> float:
    xs = [p.x for p in points]
    ys = [p.y for p in points]
    return (max(xs) - min(xs)) * (max(ys) - min(ys))


def _orientation(points: np.ndarray) -> tuple[float, float, float]:
    """Coarse yaw, pitch, roll (degrees) from face-mesh points; placement only."""
    eye_r, eye_l = points[_EYE_R], points[_EYE_L]
    roll = math.degrees(math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))
    cheek_r, cheek_l, nose = points[_CHEEK_R], points[_CHEEK_L], points[_NOSE_TIP]
    width = max(1e-6, np.linalg.norm(cheek_l - cheek_r))
    yaw = math.degrees(math.asin(float(np.clip((np.linalg.norm(nose - cheek_r) - np.linalg.norm(nose - cheek_l)) / width, -1, 1))))
    forehead, chin = points[_FOREHEAD], points[_CHIN]
    length = max(1e-6, np.linalg.norm(chin - forehead))
    pitch = math.degrees(math.asin(float(np.clip((np.linalg.norm(nose - forehead) - np.linalg.norm(chin - nose)) / length, -1, 1))))
    return (yaw, pitch, roll)


def _face_box_from_pose(landmarks: np.ndarray, min_visibility: float, size: tuple[int, int]):
    """A face box from the pose's head landmarks when the face mesh found no face (small or turned faces)."""
    head = [i for i in range(0, 11) if landmarks[i, 2] >= min_visibility]
    if len(head) < 3:
        return None
    points = landmarks[head, :2]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    pad = 0.6 * max(x1 - x0, y1 - y0, 1.0)
    height, width = size
    return (float(max(0, x0 - pad)), float(max(0, y0 - 1.3 * pad)), float(min(width, x1 + pad)), float(min(height, y1 + 1.2 * pad)))
