"""Itti-Koch saliency, RAM and RA-CNN: checks the generic registry matrix cannot make.

Expected values come from independent host computations (SciPy, explicit loops over the papers'
formulas, hand-built maps), never from npattn itself.
"""
import math

import numpy as np
import pytest
from scipy import ndimage

import autograd as ag
import npattn
from npattn.origins import itti, racnn, ram
from tests.conftest import dev, host

# =============================================================================================
# Itti-Koch-Niebur


def test_itti_pyramid_sizes_halve_with_ceil():
    rng = np.random.default_rng(0)
    for shape, expected in (((32, 32), [32, 16, 8, 4, 2, 1]), ((33, 20), [(33, 20), (17, 10), (9, 5), (5, 3)])):
        levels = len(expected)
        maps = dev(rng.standard_normal((1, 2) + shape))
        sizes = [lvl.shape[2:] for lvl in itti.pyramid(maps, levels)]
        want = [e if isinstance(e, tuple) else (e, e) for e in expected]
        assert sizes == want


def test_itti_blur_decimate_matches_scipy_replicate_blur():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((2, 3, 11, 14))
    taps = np.array([1, 4, 6, 4, 1]) / 16
    blurred = ndimage.correlate1d(ndimage.correlate1d(maps, taps, axis=2, mode="nearest"), taps, axis=3, mode="nearest")
    np.testing.assert_allclose(host(itti.blur_decimate(dev(maps))), blurred[:, :, ::2, ::2], rtol=0, atol=1e-14)


def test_itti_replicate_pad_matches_numpy_edge_mode():
    maps = np.arange(24.0).reshape(1, 2, 3, 4)
    want = np.pad(maps, ((0, 0), (0, 0), (3, 3), (3, 3)), mode="edge")
    np.testing.assert_array_equal(host(itti.replicate_pad(dev(maps), 3)), want)


def test_itti_gabor_kernels_zero_mean_l1_and_symmetric():
    kernels = itti.gabor_kernels(size=7, sigma=2.0, wavelength=4.0, gamma=0.5)[:, 0]
    assert kernels.shape == (4, 7, 7)
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 0.0, atol=1e-15)
    np.testing.assert_allclose(np.abs(kernels).sum(axis=(1, 2)), 1.0, rtol=1e-14)
    np.testing.assert_allclose(kernels[2], kernels[0].T, atol=1e-15)  # 90 deg = 0 deg with x and y swapped
    np.testing.assert_allclose(kernels[3], kernels[1][:, ::-1], atol=1e-15)  # 135 deg mirrors 45 deg
    # the formula, pixel by pixel (x = column offset, y = row offset)
    for k, degrees in enumerate((0, 45, 90, 135)):
        theta = math.radians(degrees)
        raw = np.zeros((7, 7))
        for row in range(7):
            for col in range(7):
                x, y = col - 3, row - 3
                xr, yr = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)
                raw[row, col] = math.exp(-(xr**2 + 0.25 * yr**2) / 8.0) * math.cos(2 * math.pi * xr / 4.0)
        raw -= raw.mean()
        np.testing.assert_allclose(kernels[k], raw / np.abs(raw).sum(), atol=1e-15)


def test_itti_orientation_maps_match_scipy_correlate_nearest():
    rng = np.random.default_rng(2)
    intensity = rng.uniform(0, 1, (1, 1, 9, 12))
    kernels = itti.gabor_kernels()
    (maps,) = itti.orientation_pyramid([dev(intensity)], dev(kernels))
    for k in range(4):
        want = np.abs(ndimage.correlate(intensity[0, 0], kernels[k, 0], mode="nearest"))
        np.testing.assert_allclose(host(maps)[0, k], want, rtol=0, atol=1e-14)


def test_itti_colour_features_by_hand():
    # pixel 0: (0.9, 0.3, 0.3) reddish; pixel 1: (0.6, 0.6, 0.0) yellow; pixel 2: dark (I < max(I)/10)
    image = np.zeros((1, 3, 1, 3))
    image[0, :, 0, 0] = (0.9, 0.3, 0.3)
    image[0, :, 0, 1] = (0.6, 0.6, 0.0)
    image[0, :, 0, 2] = (0.02, 0.01, 0.0)
    feats = host(itti._features(ag.Tensor(dev(image))))[0, :, 0]
    intensity = image[0].mean(axis=0)[0]
    np.testing.assert_allclose(feats[0], intensity, atol=1e-15)
    r, g, b = image[0, :, 0, 0] / intensity[0]  # 1.8, 0.6, 0.6
    np.testing.assert_allclose(feats[1:, 0], [r - (g + b) / 2, 0.0, 0.0, 0.0], atol=1e-14)  # Y < 0 -> 0
    r, g, b = image[0, :, 0, 1] / intensity[1]  # 1.5, 1.5, 0
    want = [r - (g + b) / 2, g - (r + b) / 2, 0.0, (r + g) / 2 - abs(r - g) / 2 - b]  # 0.75, 0.75, [-1.5]+, 1.5
    np.testing.assert_allclose(feats[1:, 1], want, atol=1e-14)
    np.testing.assert_array_equal(feats[1:, 2], 0.0)


def test_itti_normalize_hand_built_map():
    # min 0, max 2 -> scaled = map / 2.  Local maxima (>= 8 neighbours, >= 0.1): (1,1)=1 (global, excluded),
    # (3,3)=0.5, (0,4)=0.25 on the border; (4,0)=0.15/2 = 0.075 is below M/10 and not counted.
    grid = np.zeros((5, 5))
    grid[1, 1], grid[3, 3], grid[0, 4], grid[4, 0] = 2.0, 1.0, 0.5, 0.15
    grid[1, 2] = 0.8  # a shoulder of the global max, not a local maximum
    out = host(itti.normalize(dev(grid[None, None])))[0, 0]
    mbar = (0.5 + 0.25) / 2
    np.testing.assert_allclose(out, grid / 2 * (1 - mbar) ** 2, rtol=1e-14)
    # only the global maximum: mbar = 0, N(x) = scaled
    single = np.zeros((4, 4))
    single[2, 1] = 3.0
    np.testing.assert_allclose(host(itti.normalize(dev(single[None, None])))[0, 0], single / 3, rtol=1e-14)
    # a constant map gives zeros (no division by a zero range)
    np.testing.assert_array_equal(host(itti.normalize(dev(np.full((1, 2, 3, 3), 4.0)))), 0.0)
    # norm_max M scales the range and the threshold
    out = host(itti.normalize(dev(grid[None, None]), norm_max=10.0))[0, 0]
    np.testing.assert_allclose(out, grid * 5 * (10 - 10 * mbar) ** 2, rtol=1e-14)


def test_itti_normalize_tied_global_max_counts_second_copy():
    grid = np.zeros((3, 6))
    grid[1, 1] = grid[1, 4] = 1.0
    mask = host(itti.local_maxima(dev(grid), 0.1))
    assert mask[1, 4] and not mask[1, 1]  # first argmax excluded, the tie is another local maximum
    out = host(itti.normalize(dev(grid[None, None])))[0, 0]
    np.testing.assert_array_equal(out, 0.0)  # (M - mbar)^2 = 0


def test_itti_normalize_selection_carries_no_gradient_values_do():
    grid = np.zeros((1, 1, 5, 5))
    grid[0, 0, 1, 1], grid[0, 0, 3, 3], grid[0, 0, 4, 0] = 2.0, 1.0, 0.3
    grid += np.random.default_rng(3).uniform(0, 0.01, grid.shape)
    assert ag.gradcheck(lambda m: itti.normalize(m), dev(grid), mode="full")


def test_itti_fixations_winner_take_all_with_inhibition_of_return():
    sal = np.zeros((1, 1, 8, 8))
    sal[0, 0, 1, 1], sal[0, 0, 1, 2], sal[0, 0, 6, 6], sal[0, 0, 4, 1] = 1.0, 0.95, 0.9, 0.8
    got = host(itti.fixations(dev(sal), 3, radius=1.5))
    np.testing.assert_array_equal(got[0], [[1, 1], [6, 6], [4, 1]])  # (1,2) is inside the first disc
    got = host(itti.fixations(dev(sal), 3, radius=0.0))
    np.testing.assert_array_equal(got[0], [[1, 1], [1, 2], [6, 6]])  # only the winner itself inhibited
    # default radius min(h, w)/6 = 1.33: (1,2) at distance 1 is inhibited; (N, h, w) input accepted
    got = host(itti.fixations(dev(sal[:, 0]), 2))
    np.testing.assert_array_equal(got[0], [[1, 1], [6, 6]])
    assert got.dtype == np.int64


def test_itti_fixations_batch_independent_and_bad_shape():
    rng = np.random.default_rng(4)
    sal = rng.uniform(0, 1, (3, 1, 6, 7))
    both = host(itti.fixations(dev(sal), 4))
    for i in range(3):
        np.testing.assert_array_equal(both[i], host(itti.fixations(dev(sal[i:i + 1]), 4))[0])
    with pytest.raises(ValueError, match="itti"):
        itti.fixations(dev(sal[:, :, :, :, None]), 2)


def test_itti_saliency_paper_defaults_shape_and_sign():
    x = itti.example_image(np.random.default_rng(5), (1, 3, 256, 256), margin=0.0)
    sal = itti.itti({}, x)
    assert sal.shape == (1, 1, 16, 16)
    maps = itti.conspicuity_maps(x)
    for value in list(maps.values()) + [sal]:
        assert np.all(host(value) >= 0)


def test_itti_saliency_is_mean_of_normalized_conspicuity_maps():
    x = itti.example_image(np.random.default_rng(6), (1, 3, 32, 32))
    maps = itti.conspicuity_maps(x, **itti.SMALL_OPTIONS)
    normalized = [host(itti.normalize(maps[k])) for k in ("intensity", "colour", "orientation")]
    np.testing.assert_allclose(host(itti.itti({}, x, **itti.SMALL_OPTIONS)), sum(normalized) / 3, rtol=1e-13)


def test_itti_example_images_keep_their_margin():
    x = itti.example_image(np.random.default_rng(7), (2, 3, 32, 32))
    assert np.all(itti.selection_margins(x, **itti.SMALL_OPTIONS) >= 2e-5)
    assert np.all((host(x) >= 0) & (host(x) <= 1))


def test_itti_bad_options_and_sizes():
    x = itti.example_image(np.random.default_rng(8), (1, 3, 32, 32), margin=0.0)
    with pytest.raises(ValueError, match="itti"):
        itti.itti({}, x, levels=6, centers=(2,), deltas=(4,), map_level=2)  # surround level 6 does not exist
    with pytest.raises(ValueError, match="itti"):
        itti.itti({}, x, **{**itti.SMALL_OPTIONS, "map_level": 6})
    with pytest.raises(ValueError, match="itti"):
        itti.itti({}, x)  # paper defaults need 256 pixels


def test_itti_rejects_any_parameter():
    """The model has none: a key is a KeyError that says so (never silently ignored), also via the registry."""
    x = itti.example_image(np.random.default_rng(8), (1, 3, 32, 32), margin=0.0)
    with pytest.raises(KeyError, match=r"itti: the model has no parameters.*'extra_layer.weight'.*pass \{\}"):
        itti.itti({"extra_layer.weight": dev(np.zeros(3))}, x, **itti.SMALL_OPTIONS)
    with pytest.raises(KeyError, match="itti.*no parameters"):
        npattn.get("itti").apply({"w": dev(np.zeros(1))}, x)
    with pytest.raises(TypeError, match="itti.*empty dict"):
        itti.itti(None, x, **itti.SMALL_OPTIONS)


def test_itti_channel_error_names_rgb_not_parameters():
    x = dev(np.ones((1, 4, 32, 32)))
    with pytest.raises(ValueError, match=r"itti: x must be an RGB image batch \(N, 3, H, W\).*got shape") as info:
        itti.itti({}, x, **itti.SMALL_OPTIONS)
    assert "parameters" not in str(info.value)


@pytest.mark.parametrize("option, value", [
    ("gabor_size", 6), ("gabor_size", 0), ("gabor_size", 1), ("gabor_size", 7.0), ("gabor_sigma", 0.0),
    ("gabor_wavelength", np.nan), ("gabor_gamma", -1.0), ("norm_max", np.inf), ("levels", 5.5), ("levels", True),
    ("map_level", 1.0),
    ("centers", ()), ("centers", (1.5,)), ("deltas", ()),
])
def test_itti_option_errors_name_the_option(option, value):
    x = itti.example_image(np.random.default_rng(8), (1, 3, 32, 32), margin=0.0)
    name = {"centers": "centers", "deltas": "deltas"}.get(option, option)
    with pytest.raises(ValueError, match=f"itti: {name}"):
        itti.itti({}, x, **{**itti.SMALL_OPTIONS, option: value})


def test_itti_empty_batch_gives_an_empty_map():
    x = dev(np.zeros((0, 3, 32, 32)))
    assert itti.itti({}, x, **itti.SMALL_OPTIONS).shape == (0, 1, 8, 8)


# =============================================================================================
# RAM


def _ram_setup(seed=0, channels=2, side=10):
    rng = np.random.default_rng(seed)
    params = ram.init(rng, channels, patch_size=2, num_patches=3, glimpse_hidden=6, loc_hidden=5, num_classes=3)
    x = rng.standard_normal((2, channels, side, side))
    return params, x, {"patch_size": 2, "num_patches": 3, "glimpse_scale": 2}


def _explicit_glimpse(image, location, g, k, s):
    """The port's retina on one (C, H, W) image: zero-pad by side//2, slice, average-pool, concatenate."""
    c, h, _ = image.shape
    start = (0.5 * ((location + 1.0) * h)).astype(np.int64)  # (col, row)
    pieces, side = [], g
    for _ in range(k):
        pad = side // 2
        padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
        patch = padded[:, start[1]:start[1] + side, start[0]:start[0] + side]
        assert patch.shape == (c, side, side)
        f = side // g
        pieces.append(patch.reshape(c, g, f, g, f).mean(axis=(2, 4)))
        side = int(s * side)
    return np.concatenate(pieces, axis=0).ravel()


def test_ram_glimpse_sensor_matches_explicit_crops():
    _, x, opts = _ram_setup()
    locations = np.array([[-1.0, 1.0], [0.31, -0.77]])  # corner (start = 0 and H) and inside
    got = host(ram.glimpse_sensor(dev(x), dev(locations), **opts))
    for n in range(2):
        want = _explicit_glimpse(x[n], locations[n], opts["patch_size"], opts["num_patches"], opts["glimpse_scale"])
        np.testing.assert_allclose(got[n], want, rtol=0, atol=1e-15)


def test_ram_glimpse_sensor_non_square_and_odd_sides():
    # H on both axes (the port's quirk); odd sides read zeros outside the image instead of failing
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 1, 6, 9))
    location = np.array([[0.5, -0.2]])
    got = host(ram.glimpse_sensor(dev(image), dev(location), patch_size=3, num_patches=1))
    centre_col, centre_row = (0.5 * ((location[0] + 1.0) * 6)).astype(int)
    padded = np.pad(image[0, 0], 5)
    want = padded[5 + centre_row - 1:5 + centre_row + 2, 5 + centre_col - 1:5 + centre_col + 2]
    np.testing.assert_allclose(got[0], want.ravel(), atol=1e-15)


def test_ram_patch_sides_must_be_multiples_of_g():
    assert ram.patch_sides(4, 3, 2) == [4, 8, 16]
    assert ram.patch_sides(8, 2, 1) == [8, 8]
    with pytest.raises(ValueError, match="ram"):
        ram.patch_sides(4, 2, 1.5)


def test_ram_forward_by_hand():
    params, x, opts = _ram_setup(2)
    locations = np.random.default_rng(3).uniform(-1.3, 1.3, (2, 4, 2))
    p = {k: host(v) for k, v in params.items()}

    def lin(name, v):
        return v @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = np.zeros((2, 11))
    means, baselines = [], []
    for t in range(3):
        loc = np.clip(locations[:, t], -1, 1)
        rho = np.stack([_explicit_glimpse(x[n], loc[n], 2, 3, 2) for n in range(2)])
        g = relu(lin("sensor.fc3", relu(lin("sensor.fc1", rho))) + lin("sensor.fc4", relu(lin("sensor.fc2", loc))))
        h = relu(lin("rnn.i2h", g) + lin("rnn.h2h", h))
        means.append(np.tanh(lin("locator.fc", h)))
        baselines.append(lin("baseliner.fc", h)[:, 0])
    scores = lin("classifier.fc", h)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    out = ram.rollout(params, dev(x), dev(locations), **opts)
    np.testing.assert_allclose(host(out["log_probs"]), log_probs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(out["means"]), np.stack(means, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(out["baselines"]), np.stack(baselines, 1), rtol=1e-12, atol=1e-14)

    # the hybrid loss by hand (std 0.05, weight 0.01, A = R - b)
    labels = np.array([0, 2])
    std = 0.05
    reward = (log_probs.argmax(1) == labels).astype(float)[:, None] * np.ones((1, 3))
    b = np.stack(baselines, 1)
    mu = np.stack(means, 1)
    log_pi = (-0.5 * ((locations[:, 1:] - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
    want = (-log_probs[np.arange(2), labels].mean() + ((b - reward) ** 2).mean()
            + 0.01 * (-(log_pi * (reward - b)).sum(1)).mean())
    got = ram.reinforce_loss(params, dev(x), dev(locations), dev(labels), std=std, **opts)
    np.testing.assert_allclose(float(host(got)), want, rtol=1e-12)


def test_ram_reinforce_surrogate_gradcheck_with_constant_advantage():
    params, x, opts = _ram_setup(4)
    rng = np.random.default_rng(5)
    locations = dev(rng.uniform(-1.1, 1.1, (2, 4, 2)))
    labels = dev(np.array([1, 0]))
    advantage = dev(rng.standard_normal((2, 3)))

    def f(p, image):
        return ram.reinforce_loss(p, image, locations, labels, std=0.3, advantage=advantage,
                                  detach_baseline_input=False, **opts)

    assert ag.gradcheck(f, params, dev(x), mode="fast", n_directions=4)


def test_ram_detach_flags_cut_the_right_paths():
    params, x, opts = _ram_setup(6)
    locations = dev(np.random.default_rng(7).uniform(-1, 1, (2, 4, 2)))

    def policy_grad(detach):
        def f(p):
            out = ram.rollout(p, dev(x), locations, detach_policy_input=detach, **opts)
            return ag.sum(ram.log_policy(out["means"], ag.Tensor(locations)[:, 1:], 0.2))
        return ag.grad(f)(params)

    assert np.abs(host(policy_grad(False)["rnn.i2h.weight"])).max() > 0
    assert np.abs(host(policy_grad(True)["rnn.i2h.weight"])).max() == 0
    assert np.abs(host(policy_grad(True)["locator.fc.weight"])).max() > 0

    def baseline_grad(detach):
        return ag.grad(lambda p: ag.sum(ram.rollout(p, dev(x), locations, detach_baseline_input=detach,
                                                    **opts)["baselines"]))(params)

    assert np.abs(host(baseline_grad(True)["rnn.h2h.weight"])).max() == 0
    assert np.abs(host(baseline_grad(False)["rnn.h2h.weight"])).max() > 0


def test_ram_sample_locations_follow_the_policy_with_explicit_generator():
    params, x, opts = _ram_setup(8)
    std = 0.1
    locations = ram.sample_locations(params, dev(x), np.random.default_rng(9), 4, std=std, **opts)
    again = ram.sample_locations(params, dev(x), np.random.default_rng(9), 4, std=std, **opts)
    np.testing.assert_array_equal(host(locations), host(again))
    assert locations.shape == (2, 5, 2)
    # replay the generator: l_0 ~ U(-1, 1), then l_t = mu_t + std * eps_t with mu_t from the rollout
    replay = np.random.default_rng(9)
    first = replay.uniform(-1.0, 1.0, (2, 2))
    noise = np.stack([replay.standard_normal((2, 2)) for _ in range(4)], axis=1)
    means = host(ram.rollout(params, dev(x), locations, **opts)["means"])
    np.testing.assert_allclose(host(locations)[:, 0], first, rtol=0, atol=0)
    np.testing.assert_allclose(host(locations)[:, 1:], means + std * noise, rtol=0, atol=1e-15)


def test_ram_bad_locations_and_labels():
    params, x, opts = _ram_setup()
    with pytest.raises(ValueError, match="ram"):
        ram.ram(params, dev(x), dev(np.zeros((2, 1, 2))), **opts)  # T = 0
    with pytest.raises(ValueError, match="ram"):
        ram.ram(params, dev(x), dev(np.zeros((3, 4, 2))), **opts)  # batch mismatch
    with pytest.raises(TypeError, match="ram"):
        ram.ram(params, dev(x), dev(np.zeros((2, 4, 2), dtype=np.float32)), **opts)
    with pytest.raises(ValueError, match="ram"):
        ram.ram(params, dev(x), dev(np.zeros((2, 4, 2))), patch_size=4, num_patches=3)  # options vs params
    with pytest.raises(TypeError, match="ram.*labels.*float64"):
        ram.reinforce_loss(params, dev(x), dev(np.zeros((2, 4, 2))), dev(np.array([0.5, 1.0])), **opts)


def test_ram_nan_reaches_the_output_only_inside_a_glimpse():
    """Hard attention reads only the glimpsed patches: a NaN pixel inside one reaches the class scores, one
    outside all of them leaves the output finite and unchanged (the registry's NaN check is exempt for this)."""
    mech = npattn.get("ram")
    params = mech.default_params()
    x, locations = mech.example_input(np.random.default_rng(7))
    clean = host(mech.apply(params, x, locations))
    clamped = np.clip(host(locations), -1.0, 1.0)
    read = np.zeros((2, 12, 12), bool)                      # pixels each sample's glimpses read
    for t in range(locations.shape[1] - 1):
        for side in (4, 8):                                 # g = 4, k = 2, s = 2
            centre = np.floor(0.5 * (clamped[:, t] + 1.0) * 12).astype(int)     # the port's start, H on both axes
            rows, cols = centre[:, 1] - side // 2, centre[:, 0] - side // 2
            for n in range(2):
                read[n, max(rows[n], 0):rows[n] + side, max(cols[n], 0):cols[n] + side] = True
    assert read[1].any() and not read[1].all()
    inside, outside = np.argwhere(read[1])[0], np.argwhere(~read[1])[0]
    for (row, col), reaches in ((inside, True), (outside, False)):
        image = host(x).copy()
        image[1, 0, row, col] = np.nan
        out = host(mech.apply(params, dev(image), locations))
        np.testing.assert_array_equal(out[0], clean[0])
        if reaches:
            assert np.isnan(out[1]).all()
        else:
            np.testing.assert_array_equal(out[1], clean[1])


def test_ram_glimpse_outside_the_image_reads_zeros_even_next_to_a_non_finite_pixel():
    """The port zero-pads: a patch wholly right of a narrow image is 0, even if the edge column is NaN/Inf
    (the clipped index used to read it and multiply by 0, giving NaN)."""
    image = np.arange(12 * 6, dtype=np.float64).reshape(1, 1, 12, 6)
    image[0, 0, :, -1] = [np.nan, np.inf] * 6
    location = dev(np.array([[1.0, 0.0]]))                   # column centre floor(0.5 * 2 * 12) = 12 >= W = 6
    glimpse = host(ram.glimpse_sensor(dev(image), location, patch_size=2))
    np.testing.assert_array_equal(glimpse, np.zeros((1, 4)))
    grad = host(ag.grad(lambda im: ag.sum(ram.glimpse_sensor(im, location, patch_size=2)))(dev(image)))
    np.testing.assert_array_equal(grad, np.zeros_like(image))


@pytest.mark.parametrize("labels", [[-1, 0], [0, 4], [3, 100]])
def test_ram_labels_out_of_range_or_negative_are_errors(labels):
    mech = npattn.get("ram")
    params = mech.default_params()
    x, locations = mech.example_input(np.random.default_rng(7))
    with pytest.raises(ValueError, match=r"ram: labels must be class ids in \[0, 4\).*from"):
        ram.reinforce_loss(params, x, locations, dev(np.array(labels)), **mech.structure, **mech.options)
    with pytest.raises(ValueError, match=r"ram: labels must have shape \(2,\)"):
        ram.reinforce_loss(params, x, locations, dev(np.array([0, 1, 2])), **mech.structure, **mech.options)


def test_ram_sizes_are_structure_and_options_are_checked():
    mech = npattn.get("ram")
    assert mech.structure == {"patch_size": 4, "num_patches": 2} and mech.options == {"glimpse_scale": 2}
    params = mech.default_params()
    x, locations = mech.example_input(np.random.default_rng(7))
    for bad in (dict(glimpse_scale=np.nan), dict(patch_size=0), dict(num_patches=1.5)):
        with pytest.raises(ValueError, match="ram: (glimpse_scale|patch_size|num_patches)"):
            mech.apply(params, x, locations, **bad)
    with pytest.raises(TypeError, match="ram: detach_policy_input must be True or False"):
        mech.apply(params, x, locations, detach_policy_input="no")
    nan_locations = host(locations).copy()
    nan_locations[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match="ram: locations must be finite"):
        mech.apply(params, x, dev(nan_locations))
    labels = dev(np.array([0, 1]))
    for bad in (dict(std=0.0), dict(reinforce_weight=np.inf)):
        with pytest.raises(ValueError, match="ram: (std|reinforce_weight)"):
            ram.reinforce_loss(params, x, locations, labels, **mech.structure, **mech.options, **bad)
    for size in ((0, 0), (0, 5), (5, 0)):
        with pytest.raises(ValueError, match="ram: x spatial size .* too small"):
            mech.apply(params, dev(np.zeros((2, 1) + size)), locations)
    with pytest.raises(ValueError, match="ram: num_glimpses"):
        ram.sample_locations(params, x, np.random.default_rng(0), 0, **mech.structure, **mech.options)
    with pytest.raises(ValueError, match="ram: advantage of shape"):
        ram.reinforce_loss(params, x, locations, labels, advantage=dev(np.zeros((2, 5))), **mech.structure,
                           **mech.options)


# =============================================================================================
# RA-CNN


def _logistic(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return math.exp(z) / (1.0 + math.exp(z))


def _literal_mask(box, h, w, k=10.0):
    tx, ty, tl = box
    mask = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            mask[y, x] = ((_logistic(k * (x - (tx - tl))) - _logistic(k * (x - (tx + tl))))
                          * (_logistic(k * (y - (ty - tl))) - _logistic(k * (y - (ty + tl)))))
    return mask


def _literal_zoom(attended, box, size):
    """X_amp(i, j) = sum_{a,b} |1 - a - {u_i}| |1 - b - {v_j}| X_att([u_i] + a, [v_j] + b), zero outside."""
    tx, ty, tl = box
    c, h, w = attended.shape
    lam = size / (2 * tl)
    out = np.zeros((c, size, size))
    for i in range(size):
        u = (ty - tl) + i / lam
        for j in range(size):
            v = (tx - tl) + j / lam
            for a in (0, 1):
                for b in (0, 1):
                    m, n = math.floor(u) + a, math.floor(v) + b
                    if 0 <= m < h and 0 <= n < w:
                        weight = abs(1 - a - (u - math.floor(u))) * abs(1 - b - (v - math.floor(v)))
                        out[:, i, j] += weight * attended[:, m, n]
    return out


def _boxes_away_from_integers(rng, n, side, size, margin=0.05):
    """Boxes (n, 3) inside sensible ranges whose sample positions u_i, v_j all keep ``margin`` from integers."""
    boxes = []
    while len(boxes) < n:
        tl = rng.uniform(side / 6, side / 2)
        tx, ty = rng.uniform(0, side, 2)
        steps = 2 * tl * np.arange(size) / size
        positions = np.concatenate([tx - tl + steps, ty - tl + steps])
        frac = positions - np.floor(positions)
        if np.all((frac > margin) & (frac < 1 - margin)):
            boxes.append((tx, ty, tl))
    return np.array(boxes)


def test_racnn_mask_matches_literal_logistic_formula():
    boxes = np.array([[4.3, 6.1, 2.7], [0.5, 9.5, 4.9]])
    got = host(racnn.boxcar_mask(dev(boxes), 9, 11))
    assert got.shape == (2, 1, 9, 11)
    for n in range(2):
        np.testing.assert_allclose(got[n, 0], _literal_mask(boxes[n], 9, 11), rtol=1e-13, atol=1e-16)
    # k = 10: ~1 well inside the box, ~0 well outside
    assert got[0, 0, 6, 4] > 0.99 and got[0, 0, 0, 10] < 1e-6


def test_racnn_zoom_matches_literal_sum_over_alpha_beta():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 12, 12))
    boxes = np.array([[5.37, 6.81, 3.13], [2.2, 10.4, 5.55]])  # the second box leaves the image (zeros)
    got = host(racnn.crop_and_zoom(dev(image), dev(boxes)))
    for n in range(2):
        attended = image[n] * _literal_mask(boxes[n], 12, 12)
        np.testing.assert_allclose(got[n], _literal_zoom(attended, boxes[n], 12), rtol=0, atol=1e-14)
    # another output size
    got = host(racnn.crop_and_zoom(dev(image[:1]), dev(boxes[:1]), size=7))
    np.testing.assert_allclose(got[0], _literal_zoom(image[0] * _literal_mask(boxes[0], 12, 12), boxes[0], 7),
                               rtol=0, atol=1e-14)


def test_racnn_zoom_at_integer_positions_is_a_pure_crop():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 1, 8, 8))
    box = np.array([[5.0, 4.0, 2.0]])  # lambda = 2: u_i = 2 + i/2, whole pixels at even i
    got = host(racnn.crop_and_zoom(dev(image), dev(box), k=1e3, size=8))
    mask = _literal_mask(box[0], 8, 8, k=1e3)
    np.testing.assert_allclose(got[0, 0, ::2, ::2], (image[0, 0] * mask)[2:6, 3:7], atol=1e-14)


def test_racnn_gradcheck_wrt_box_away_from_integer_sample_positions():
    rng = np.random.default_rng(2)
    image = dev(rng.standard_normal((2, 2, 8, 8)))
    boxes = dev(_boxes_away_from_integers(rng, 2, 8, 8))
    assert ag.gradcheck(lambda b: racnn.crop_and_zoom(image, b), boxes, mode="full")
    assert ag.gradcheck(lambda x, b: racnn.crop_and_zoom(x, b, size=5), image, boxes, mode="fast", n_directions=4)


def test_racnn_mask_only_estimator_freezes_the_sampling_positions():
    """grad_through_sampling=False equals the exact derivative of the zoom with u, v frozen at the box."""
    rng = np.random.default_rng(3)
    image = dev(rng.standard_normal((1, 2, 8, 8)))
    box0 = dev(_boxes_away_from_integers(rng, 1, 8, 8))

    def frozen(b):  # mask follows b, sampling matrices stay those of box0
        attended = ag.Tensor(image) * racnn.boxcar_mask(b, 8, 8)
        t = ag.Tensor(box0)
        rows = racnn.sampling_matrix(t[:, 1] - t[:, 2], t[:, 2], 8, 8)
        cols = racnn.sampling_matrix(t[:, 0] - t[:, 2], t[:, 2], 8, 8)
        return ag.matmul(ag.matmul(ag.expand_dims(rows, 1), attended),
                         ag.expand_dims(ag.transpose(cols, (0, 2, 1)), 1))

    cot = dev(rng.standard_normal((1, 2, 8, 8)))
    want = ag.grad(lambda b: ag.sum(frozen(b) * cot))(box0)
    got = ag.grad(lambda b: ag.sum(racnn.crop_and_zoom(image, b, grad_through_sampling=False) * cot))(box0)
    np.testing.assert_allclose(host(got), host(want), rtol=1e-13, atol=1e-14)
    exact = ag.grad(lambda b: ag.sum(racnn.crop_and_zoom(image, b) * cot))(box0)
    assert not np.allclose(host(got), host(exact))  # the paper's estimator is not the full derivative
    assert ag.gradcheck(frozen, box0, mode="full")


def test_racnn_apn_boxes_are_bounded():
    mech = npattn.get("racnn")
    params = mech.default_params()
    # large APN weights push the sigmoid to both ends
    params = {k: (v * 40 if k.startswith("apn") else v) for k, v in params.items()}
    x = dev(np.random.default_rng(4).standard_normal((6, 3, 16, 16)))
    boxes = host(racnn.forward(params, x)["boxes"])
    assert boxes.shape == (6, 2, 3)
    assert np.all((boxes[..., :2] >= 0) & (boxes[..., :2] <= 16))
    assert np.all((boxes[..., 2] >= 16 / 6) & (boxes[..., 2] <= 8))


def test_racnn_loss_by_hand_and_gradcheck():
    mech = npattn.get("racnn")
    params = mech.default_params(seed=5)
    (x,) = mech.example_input(np.random.default_rng(6))
    labels = np.array([1, 3])
    logits = host(mech.apply(params, x))  # (N, 3, classes)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    true = np.exp(log_probs[np.arange(2), :, labels])  # (N, 3)
    want = (-log_probs[np.arange(2), :, labels].mean(0).sum()
            + sum(np.maximum(0, true[:, s] - true[:, s + 1] + 0.05).mean() for s in range(2)))
    got = float(host(racnn.loss(params, x, dev(labels))))
    np.testing.assert_allclose(got, want, rtol=1e-13)
    assert ag.gradcheck(lambda p, image: racnn.loss(p, image, dev(labels)), params, x, mode="fast")


def test_racnn_scales_chain_through_the_boxes():
    mech = npattn.get("racnn")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(7))
    out = racnn.forward(params, x)
    for s in range(2):
        want = racnn.crop_and_zoom(out["inputs"][s], out["boxes"][:, s])
        np.testing.assert_array_equal(host(out["inputs"][s + 1]), host(want))


def test_racnn_relu_maxpool_backbone_and_bad_inputs():
    mech = npattn.get("racnn")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(8))
    out = racnn.racnn(params, x, activation="relu", pooling="max")
    assert out.shape == (2, 3, 5) and np.all(np.isfinite(host(out)))
    with pytest.raises(ValueError, match="racnn"):
        racnn.racnn(params, x, activation="gelu")
    with pytest.raises(ValueError, match="racnn"):
        racnn.racnn(params, dev(np.zeros((2, 3, 20, 20))))
    with pytest.raises(TypeError, match="racnn.*labels.*float64"):
        racnn.loss(params, x, dev(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="racnn"):
        racnn.init(np.random.default_rng(0), image_size=18)


@pytest.mark.parametrize("labels", [[-1, 0], [0, 5], [7, 1]])
def test_racnn_labels_out_of_range_or_negative_are_errors(labels):
    mech = npattn.get("racnn")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(8))
    with pytest.raises(ValueError, match=r"racnn: labels must be class ids in \[0, 5\).*from"):
        racnn.loss(params, x, dev(np.array(labels)))
    with pytest.raises(ValueError, match=r"racnn: labels must have shape \(2,\)"):
        racnn.loss(params, x, dev(np.array([[0, 1]])))


def test_racnn_options_and_parameter_shapes_are_checked():
    mech = npattn.get("racnn")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(8))
    for bad in (dict(k=0.0), dict(k=np.nan)):
        with pytest.raises(ValueError, match="racnn: k"):
            racnn.racnn(params, x, **bad)
    with pytest.raises(TypeError, match="racnn: grad_through_sampling"):
        racnn.racnn(params, x, grad_through_sampling="no")
    with pytest.raises(ValueError, match="racnn: margin"):
        racnn.loss(params, x, dev(np.array([0, 1])), margin=np.inf)
    wide = {**params, "cnn2.conv1.weight": dev(np.zeros((8, 3, 5, 5)))}      # a 5x5 kernel would shrink the map
    with pytest.raises(ValueError, match=r"racnn: parameter 'cnn2.conv1.weight' must have shape \(8, 3, 3, 3\)"):
        racnn.racnn(wide, x)
    odd = {**params, "classifier1.weight": dev(np.zeros((5, 100)))}
    with pytest.raises(ValueError, match=r"racnn: parameter 'classifier1.weight' must have width \* \(S/4\)\^2"):
        racnn.racnn(odd, x)


def test_racnn_attention_box_reads_its_own_prefix():
    mech = npattn.get("racnn")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(8))
    out = racnn.forward(params, x)
    features = racnn._features(npattn.params.Params("racnn", params), 1, x, "tanh", "avg")
    np.testing.assert_array_equal(host(racnn.attention_box(params, 1, features, 16)), host(out["boxes"][:, 0]))
    with pytest.raises(KeyError, match="racnn.*'apn1.extra.weight'"):
        racnn.attention_box({**params, "apn1.extra.weight": params["apn1.fc1.weight"]}, 1, features, 16)
