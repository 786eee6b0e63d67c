"""Stage 1: person geometry on real photos, and the typed rejections."""

from __future__ import annotations

import numpy as np
import pytest

from pexir_tryon.errors import TryOnError
from pexir_tryon.geometry import Landmark


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "camera"])
def test_finds_both_shoulders_and_a_face_on_each_bundled_photo(geometries, name):
    geometry = geometries[name]
    assert geometry.all_visible(Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER)
    assert geometry.face_box is not None


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_waist_up_photos_have_no_trusted_hips(geometries, name):
    assert not geometries[name].visible(Landmark.LEFT_HIP)
    assert not geometries[name].visible(Landmark.RIGHT_HIP)


def test_full_body_photo_has_trusted_hips(geometries):
    assert geometries["camera"].all_visible(Landmark.LEFT_HIP, Landmark.RIGHT_HIP)


def test_repr_carries_no_coordinates(geometries):
    geometry = geometries["astronaut"]
    text = repr(geometry) + str(geometry)
    for x, y, _ in geometry.landmarks[[Landmark.NOSE, Landmark.LEFT_SHOULDER]]:
        assert f"{x:.1f}" not in text and f"{int(x)}." not in text
    assert "landmarks" not in text.replace("visible_landmarks", "")


def test_geometry_has_no_way_to_be_saved(geometries):
    geometry = geometries["astronaut"]
    for name in ("save", "to_json", "dump", "write", "to_dict", "model_dump"):
        assert not hasattr(geometry, name)


def test_person_mask_is_kept_small(geometries, settings):
    assert max(geometries["astronaut"].person_mask.shape) <= settings.geometry.mask_max_side


def test_photo_without_a_person_is_rejected(detector):
    import skimage.data

    with pytest.raises(TryOnError) as error:
        detector.detect(skimage.data.coffee())
    assert error.value.code == "no_person_detected"


def test_blank_photo_is_rejected_as_no_person(detector):
    with pytest.raises(TryOnError) as error:
        detector.detect(np.full((400, 300, 3), 200, dtype=np.uint8))
    assert error.value.code == "no_person_detected"


def test_two_people_side_by_side_are_rejected(detector, photos):
    pair = np.concatenate([photos["grace_hopper"], photos["grace_hopper"][:, ::-1]], axis=1)
    with pytest.raises(TryOnError) as error:
        detector.detect(np.ascontiguousarray(pair))
    assert error.value.code == "multiple_people"


def test_person_far_away_in_a_large_frame_is_too_small(detector, photos):
    import cv2

    canvas = np.full((2400, 2400, 3), 235, dtype=np.uint8)
    small = cv2.resize(photos["grace_hopper"], (128, 150), interpolation=cv2.INTER_AREA)
    canvas[1000:1150, 1100:1228] = small
    with pytest.raises(TryOnError) as error:
        detector.detect(canvas)
    assert error.value.code in ("person_too_small", "no_person_detected")


def test_shoulder_order_without_a_face_means_facing_away(detector, geometries):
    from dataclasses import replace

    geometry = geometries["grace_hopper"]
    swapped = geometry.landmarks.copy()
    swapped[[Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER]] = swapped[[Landmark.RIGHT_SHOULDER, Landmark.LEFT_SHOULDER]]
    back_view = replace(geometry, landmarks=swapped, faces_found=0, face_box=None, face_outline=None)
    mask = np.full(geometry.image_size, 255, dtype=np.uint8)
    with pytest.raises(TryOnError) as error:
        detector._check_usable(back_view, mask)
    assert error.value.code == "person_facing_away"


def test_head_cut_off_is_rejected(detector, photos):
    image = photos["grace_hopper"]
    without_head = np.ascontiguousarray(image[330:])  # below the chin: shoulders and chest only
    with pytest.raises(TryOnError) as error:
        detector.detect(without_head)
    assert error.value.code in ("person_cropped", "no_person_detected")


def test_a_garment_photo_showing_a_person_is_refused(detector, photos):
    with pytest.raises(TryOnError) as error:
        detector.check_garment_photo(photos["grace_hopper"])
    assert error.value.code == "garment_photo_has_person"


@pytest.mark.parametrize("name", ["tshirt", "longsleeve", "dress", "trousers", "longsleeve_cutout"])
def test_a_flat_lay_garment_photo_is_not_taken_for_a_person(detector, garments, name):
    detector.check_garment_photo(garments[name])


@pytest.mark.parametrize("pad", [(85, 86, 0, 0), (0, 0, 85, 86)])
def test_a_padded_photo_still_finds_the_person(detector, photos, pad):
    import cv2

    top, bottom, left, right = pad
    padded = cv2.copyMakeBorder(photos["camera"], top, bottom, left, right, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    geometry = detector.detect(padded)
    assert geometry.all_visible(Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER)


def test_a_grayscale_photo_still_finds_the_person(detector, photos):
    gray = np.repeat(photos["grace_hopper"].mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert detector.detect(gray).all_visible(Landmark.LEFT_SHOULDER, Landmark.RIGHT_SHOULDER)
