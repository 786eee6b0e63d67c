"""Stage 2: the TPS warp, garment masks and anchors, categories, and the composite on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pexir_tryon.config import GarmentSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.garment import WarpRequest
from pexir_tryon.garment.anchors import check_category, classify_category, garment_anchors, shape_features
from pexir_tryon.garment.mask import garment_mask
from pexir_tryon.garment.tps import fit_tps, tps_sampling_grid, warp_with_grid
from pexir_tryon.geometry import Landmark
from pexir_tryon.samples import garment_outline

UPPER_GARMENTS = ["tshirt", "longsleeve", "tshirt_striped", "longsleeve_cutout"]


# --- the warp -------------------------------------------------------------------------------

def test_tps_maps_each_control_point_onto_its_target():
    source = torch.tensor([[[10.0, 12.0], [90.0, 8.0], [50.0, 55.0], [12.0, 92.0], [88.0, 90.0]]])
    target = torch.tensor([[[30.0, 20.0], [170.0, 25.0], [100.0, 120.0], [20.0, 180.0], [185.0, 170.0]]])
    grid = tps_sampling_grid(target, source, out_size=(200, 200), source_size=(100, 100))
    for (tx, ty), (sx, sy) in zip(target[0].tolist(), source[0].tolist()):
        gx, gy = grid[0, int(ty), int(tx)].tolist()
        assert (gx + 1) / 2 * 100 - 0.5 == pytest.approx(sx, abs=0.6)
        assert (gy + 1) / 2 * 100 - 0.5 == pytest.approx(sy, abs=0.6)


def test_tps_of_an_affine_motion_is_that_affine_motion():
    source = torch.rand(2, 6, 2) * 100
    target = source * 1.5 + torch.tensor([4.0, -7.0])
    kernel, affine = fit_tps(source, target)
    assert kernel.abs().max() < 1e-3
    assert torch.allclose(affine[:, 1:], torch.eye(2).expand(2, 2, 2) * 1.5, atol=1e-3)


def test_warping_moves_a_marked_pixel_to_its_target():
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 20, 30] = 1.0
    source = torch.tensor([[[30.0, 20.0], [5.0, 5.0], [60.0, 5.0], [5.0, 60.0], [60.0, 60.0]]])
    target = source.clone()
    target[0, 0] = torch.tensor([40.0, 44.0])
    grid = tps_sampling_grid(target, source, (64, 64), (64, 64))
    warped = warp_with_grid(image, grid)
    y, x = np.unravel_index(int(warped[0, 0].argmax()), (64, 64))
    assert (x, y) == (40, 44)


def test_batched_grids_equal_one_by_one_grids():
    source = torch.rand(3, 7, 2) * 50
    target = source + torch.rand(3, 7, 2) * 10
    batched = tps_sampling_grid(target, source, (40, 30), (50, 50))
    for i in range(3):
        single = tps_sampling_grid(target[i : i + 1], source[i : i + 1], (40, 30), (50, 50))
        assert torch.allclose(batched[i], single[0], atol=1e-4)


# --- garment masks, anchors and categories --------------------------------------------------

@pytest.mark.parametrize("name", ["tshirt", "longsleeve", "dress", "trousers", "tshirt_striped", "dress_checked", "longsleeve_cutout"])
def test_garment_mask_matches_the_drawn_outline(garments, name):
    kind = name.split("_")[0]
    truth = np.zeros(garments[name].shape[:2], np.uint8)
    cv2.fillPoly(truth, [np.array(garment_outline(kind), np.int32)], 1)
    mask = garment_mask(garments[name], GarmentSettings())
    iou = (mask & (truth > 0)).sum() / (mask | (truth > 0)).sum()
    assert iou > 0.97


@pytest.mark.parametrize(
    "name, category",
    [("tshirt", "upper"), ("longsleeve", "upper"), ("dress", "dress"), ("trousers", "lower"),
     ("tshirt_striped", "upper"), ("dress_checked", "dress"), ("longsleeve_cutout", "upper")],
)
def test_auto_category_reads_the_garment_shape(garments, name, category):
    assert classify_category(shape_features(garment_mask(garments[name], GarmentSettings()))) == category


def test_upper_anchors_lie_where_the_drawing_puts_them(garments):
    anchors = garment_anchors(garment_mask(garments["tshirt"], GarmentSettings()), "upper")
    points = anchors.points
    assert anchors.has_sleeves
    assert points["sleeve_l"][0] < points["shoulder_l"][0] < points["neck"][0] < points["shoulder_r"][0] < points["sleeve_r"][0]
    assert points["hem_l"][1] == pytest.approx(0.92 * 700, abs=0.03 * 700)
    assert points["hem_l"][0] == pytest.approx(0.24 * 600, abs=6) and points["hem_r"][0] == pytest.approx(0.76 * 600, abs=6)
    assert points["sleeve_l"][0] == pytest.approx(0.06 * 600, abs=20)


def test_long_sleeve_ends_are_at_the_cuffs(garments):
    points = garment_anchors(garment_mask(garments["longsleeve"], GarmentSettings()), "upper").points
    assert points["sleeve_l"][1] > 0.75 * 700 and points["sleeve_r"][1] > 0.75 * 700


def test_trouser_anchors_have_a_hem_per_leg_and_a_crotch(garments):
    points = garment_anchors(garment_mask(garments["trousers"], GarmentSettings()), "lower").points
    assert points["hem_l"][0] < 300 < points["hem_r"][0]
    assert points["crotch"][1] == pytest.approx(0.36 * 700, abs=0.05 * 700)
    assert points["waist_l"][1] < 0.1 * 700


def test_dress_has_a_waist_narrower_than_its_hem(garments):
    points = garment_anchors(garment_mask(garments["dress"], GarmentSettings()), "dress").points
    assert points["waist_r"][0] - points["waist_l"][0] < points["hem_r"][0] - points["hem_l"][0]


def test_trousers_given_as_upper_is_a_category_mismatch(garments):
    with pytest.raises(TryOnError) as error:
        check_category("upper", shape_features(garment_mask(garments["trousers"], GarmentSettings())))
    assert error.value.code == "category_mismatch"


def test_photo_with_no_garment_is_rejected():
    plain = np.full((500, 400, 3), 240, np.uint8)
    with pytest.raises(TryOnError) as error:
        garment_mask(plain, GarmentSettings())
    assert error.value.code == "garment_not_found"


def test_busy_background_is_rejected(garments):
    noisy = np.random.default_rng(0).integers(0, 255, (700, 600, 3), dtype=np.uint8)
    with pytest.raises(TryOnError) as error:
        garment_mask(noisy, GarmentSettings())
    assert error.value.code == "garment_background_not_plain"


def test_unknown_category_is_rejected(warper, garments):
    with pytest.raises(TryOnError) as error:
        warper.prepare_garment(garments["tshirt"], "hat")
    assert error.value.code == "unsupported_category"


# --- the composite on real photos -----------------------------------------------------------

def _torso_samples(geometry) -> np.ndarray:
    """Points inside the torso between the shoulders, a band below the shoulder line."""
    l, r = geometry.point(Landmark.LEFT_SHOULDER), geometry.point(Landmark.RIGHT_SHOULDER)
    across = r - l
    span = np.linalg.norm(across)
    down = np.array([-across[1], across[0]]) / span
    if down[1] < 0:
        down = -down
    points = []
    for a in np.linspace(0.2, 0.8, 7):
        for b in np.linspace(0.25, 0.6, 5):
            points.append(l + a * across + b * span * down)
    return np.array(points)


@pytest.fixture(scope="module")
def upper_results(warper, photos, geometries, garments):
    results = {}
    for person in photos:
        for garment in UPPER_GARMENTS:
            result = warper.warp_batch([WarpRequest(photos[person], garments[garment], geometries[person])])[0]
            assert not isinstance(result, Exception), f"{person} x {garment}: {result!r}"
            results[person, garment] = result
    return results


@pytest.mark.parametrize("person", ["astronaut", "grace_hopper", "camera"])
@pytest.mark.parametrize("garment", UPPER_GARMENTS)
def test_output_has_the_person_photos_size(upper_results, photos, person, garment):
    assert upper_results[person, garment].composite.shape == photos[person].shape


@pytest.mark.parametrize("person", ["astronaut", "grace_hopper", "camera"])
@pytest.mark.parametrize("garment", UPPER_GARMENTS)
def test_garment_covers_the_torso_between_the_shoulders(upper_results, geometries, person, garment):
    placed = upper_results[person, garment].garment_mask > 0
    height, width = placed.shape
    samples = [p for p in _torso_samples(geometries[person]) if 0 <= p[0] < width and 0 <= p[1] < height]
    covered = np.mean([placed[int(y), int(x)] for x, y in samples])
    assert covered >= 0.8, f"only {covered:.0%} of the torso is covered"


@pytest.mark.parametrize("person", ["astronaut", "grace_hopper", "camera"])
@pytest.mark.parametrize("garment", UPPER_GARMENTS)
def test_garment_stays_on_the_person(upper_results, geometries, settings, person, garment):
    placed = upper_results[person, garment].garment_mask > 0
    height, width = placed.shape
    person_mask = geometries[person].person_mask_at(height, width) > 127
    margin = 2 * settings.garment.person_margin_px + 3
    near_person = cv2.dilate(person_mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    assert (placed & ~near_person).sum() <= 0.002 * placed.size


@pytest.mark.parametrize("person", ["astronaut", "grace_hopper", "camera"])
@pytest.mark.parametrize("garment", UPPER_GARMENTS)
def test_face_region_is_unchanged(upper_results, photos, geometries, person, garment):
    x0, y0, x1, y1 = (int(round(v)) for v in geometries[person].face_box)
    out = upper_results[person, garment].composite
    assert np.array_equal(out[y0:y1, x0:x1], photos[person][y0:y1, x0:x1])


def test_garment_changes_the_torso_pixels(upper_results, photos):
    result = upper_results["grace_hopper", "tshirt"]
    placed = result.garment_mask > 0
    difference = np.abs(result.composite.astype(int) - photos["grace_hopper"].astype(int)).sum(axis=2)
    assert np.median(difference[placed]) > 60


def test_waist_up_photo_gets_the_hem_at_the_bottom_edge(upper_results, geometries):
    placed = upper_results["astronaut", "tshirt"].garment_mask > 0
    assert placed[-3:].any()


def test_refine_mask_excludes_the_face(upper_results, geometries):
    x0, y0, x1, y1 = (int(round(v)) for v in geometries["grace_hopper"].face_box)
    assert not upper_results["grace_hopper", "tshirt"].refine_mask[y0:y1, x0:x1].any()


def test_lower_garment_on_a_waist_up_photo_is_rejected(warper, photos, geometries, garments):
    result = warper.warp_batch([WarpRequest(photos["astronaut"], garments["trousers"], geometries["astronaut"])])[0]
    assert isinstance(result, TryOnError) and result.code == "body_region_not_visible"


def test_trousers_on_a_full_body_photo_land_below_the_hips(warper, photos, geometries, garments):
    result = warper.warp_batch([WarpRequest(photos["camera"], garments["trousers"], geometries["camera"])])[0]
    assert result.category == "lower"
    ys = np.nonzero(result.garment_mask)[0]
    hip_y = geometries["camera"].point(Landmark.LEFT_HIP)[1]
    assert np.median(ys) > hip_y


def test_one_bad_row_does_not_fail_the_batch(warper, photos, geometries, garments):
    results = warper.warp_batch([
        WarpRequest(photos["astronaut"], garments["trousers"], geometries["astronaut"]),
        WarpRequest(photos["grace_hopper"], garments["tshirt"], geometries["grace_hopper"]),
    ])
    assert isinstance(results[0], TryOnError)
    assert results[1].composite.shape == photos["grace_hopper"].shape


def test_any_aspect_ratio_is_padded_not_cropped(warper, detector, photos, garments):
    wide = cv2.copyMakeBorder(photos["grace_hopper"], 0, 0, 400, 400, cv2.BORDER_CONSTANT, value=(250, 250, 250))
    result = warper.warp_batch([WarpRequest(wide, garments["tshirt"], detector.detect(wide))])[0]
    assert result.composite.shape == wide.shape


@pytest.mark.parametrize("person", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("dress", ["dress", "dress_checked"])
def test_a_dress_sent_as_upper_is_worn_as_a_top_below_the_chin(warper, photos, geometries, garments, person, dress):
    # A flared hem once put the "shoulders" on the skirt and the bodice around the head.
    geometry = geometries[person]
    result = warper.warp_batch([WarpRequest(photos[person], garments[dress], geometry, category="upper")])[0]
    assert result.category == "upper"
    chin = int(geometry.face_box[3])
    placed = result.garment_mask > 0
    assert not placed[:chin].any(), f"{placed[:chin].sum()} garment pixels above the chin"
    assert placed[-3:].any()  # and it still runs to the bottom edge of a waist-up photo

