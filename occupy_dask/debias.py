"""Noise-debiased local scale (``--debias``): the local maximum measured above the noise floor.

The local scale is a ball maximum of the scale data. The maximum of signal plus noise is
biased upward, most where the signal is weak: solvent noise alone already reads the *noise
floor*, the typical kernel maximum of noise. This module models what the maximum filter does to
the map's noise and inverts it.

The model, with every number taken from the map:

- Noise: Gaussian with the solvent model's mean ``mu`` and width (``sigma`` of the low-passed
  map; in resolution mode the raw map's, from ``sigma`` and the power the low-pass keeps of
  noise that is flat up to the resolution, or up to Nyquist when none is given), band-limited
  as the low-pass (or that band limit) makes it. Inside the band its power falls (or rises) as
  ``exp(-B k^2 / 2)``: ``B`` is measured where the scale data is the low-passed map, from the
  tiles that hold only confident solvent (how rough the noise is there: the squared steps
  between neighbouring voxels against the squared deviations from the tile's mean), and is 0
  (flat) elsewhere. A unit field of it is simulated on a small box with the map's voxel sizes.
- Signal in a kernel around a voxel whose signal maximum is ``v``: ``v (1 + kappa (z - max z))``
  with ``z`` an independent field of the same correlation (the texture of density at this
  resolution). ``kappa``, the texture's size relative to the level, comes from the densest tiles
  of the map: their mean and variance above the noise give ``sd / mean``.
- The response ``h(v)``: the median, over kernels of the simulated fields, of the kernel maximum
  of signal plus noise; ``h(0)`` is the noise floor. ``h`` rises from the floor to ``v + mu`` for
  signal far above the noise.

The debiased scale is ``clip(h^-1(M) / h^-1(s_max), 0, 1)`` with ``M`` the ball maximum at a
voxel and ``s_max`` the full-scale reference: both are measured above the noise the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import ProcessingError
from .kernels.fourier import exact_lowpass_mask, frequencies
from .kernels.local import ellipsoid_terms, inverse_response, kernel_maxima
from .settings import Settings
from .solvent import SOLVENT_ADVICE, ConfidenceTable, SolventModel

SIMULATION_VOXELS = 1_000_000  # voxels of each simulated field (a box of the map's voxel shape)
SIMULATION_KERNELS = 3000  # kernels sampled from the simulated fields
SIMULATION_SEED = 20231113
RESPONSE_POINTS = 160  # signal levels at which the response h(v) is simulated
TABLE_POINTS = 4096  # uniform samples of the inverse response used per voxel
TEXTURE_TILES = 10  # densest tiles whose texture gives kappa
MIN_SOLVENT_TILES = 20  # fewer tiles of confident solvent: the noise is taken as flat inside the band
FALLOFF_RANGE = 1000.0  # the fitted falloff changes the noise power at the band's edge at most this much, either way


@dataclass(frozen=True)
class NoiseFloor:
    """What the maximum filter does to this map's noise, and its inverse.

    Values in map units. ``table`` samples ``h^-1`` on ``table_start + i * table_step``; below
    the table the signal is 0 and above it ``h^-1(m) = m - offset``.
    """

    mu: float
    sigma: float  # noise width of the scale data
    correlation: str  # how the simulated noise is correlated (for the log)
    kappa: float
    texture_tiles: int
    falloff: float  # B [Å^2]: noise power inside the band as exp(-B k^2 / 2)
    solvent_tiles: int  # tiles of confident solvent B was measured in (0: not measured, flat)
    spectrum: str  # how the noise's spectrum inside the band was obtained (for the log)
    floor: float  # h(0): the median kernel maximum of noise alone
    signal_levels: np.ndarray  # v of the simulated response
    response: np.ndarray  # h(v)
    noise_maxima: np.ndarray  # kernel maxima of simulated noise alone (for the plot)
    table_start: float
    table_step: float
    table: np.ndarray  # float32
    offset: float
    signal_max: float = math.nan  # h^-1(s_max): the full-scale reference above the noise

    def signal(self, value: float) -> float:
        """``h^-1`` of one float32 value of the scale data (a full-scale reference, a target's maximum)."""
        return inverse_response(float(np.float32(value)), self)


def map_noise_floor(
    s: Settings, model: SolventModel, table: ConfidenceTable, lp_counts, moments_of_tiles, tile_origins, s_max: float, value_max: float
) -> NoiseFloor:
    """The noise-floor model of this map, from the solvent model, the voxels it calls solvent
    with confidence (content fraction 0), the tiles (``moments_of_tiles``: per block, tile ids
    and per-tile :data:`~occupy_dask.kernels.tiles.TILE_MOMENTS`; ``tile_origins`` by id): the
    densest for the texture, those of confident solvent for the noise's spectrum, and the
    largest value of the scale data ``value_max``."""
    solvent_bins = np.asarray(table.fraction) <= 0
    solvent_voxels = int(np.asarray(lp_counts)[solvent_bins].sum())
    if solvent_voxels == 0:
        raise ProcessingError(
            "--debias needs confident solvent to measure the noise floor, and the solvent model calls no voxel solvent "
            f"with confidence (no histogram bin has content fraction 0); {SOLVENT_ADVICE}, or run without --debias"
        )
    ids = np.concatenate([m[0] for m in moments_of_tiles])
    stats = np.concatenate([m[1] for m in moments_of_tiles])
    means, variances = top_tiles(ids, stats, s.tile_size**3)
    roughness, flat = None, "flat, not measured: the tiles hold the raw map, and solvent is told by the low-passed one"
    if s.scale_mode == "occ" or not s.lowpass_applied:  # the tiles hold the low-passed map, whose values tell solvent
        limit = float(np.asarray(table.edges)[np.flatnonzero(solvent_bins)[-1] + 1])
        roughness = solvent_roughness(ids, stats, np.asarray(tile_origins), s.shape, s.tile_size, limit)
        flat = f"flat, not measured: fewer than {MIN_SOLVENT_TILES} tiles of confident solvent that vary, inside the inscribed ellipsoid"
    floor = noise_floor_model(
        kernel=s.kernel,
        voxel_size=s.voxel_size,
        lowpass_angstrom=s.lowpass_angstrom,
        lowpass_applied=s.lowpass_applied,
        occupancy_mode=s.scale_mode == "occ",
        resolution_angstrom=s.resolution_angstrom,
        mu=model.mu,
        sigma_lowpass=model.sigma,
        tile_means=means,
        tile_variances=variances,
        s_max=s_max,
        value_max=value_max,
        roughness=roughness,
        tile_size=s.tile_size,
    )
    if roughness is None:
        floor = replace(floor, spectrum=flat)
    if not floor.signal_max > 0:
        raise ProcessingError(
            f"--debias: the full-scale reference s_max {s_max:.4g} does not rise above the noise floor {floor.floor:.4g} "
            f"(noise {floor.correlation}), so no scale can be measured above the noise; "
            "give --resolution (a band-limited map has less noise per voxel), try --occupancy, or run without --debias"
        )
    return floor


def _band(shape, voxel_size, cutoff_angstrom: float | None) -> np.ndarray | bool:
    """The real-FFT frequencies up to ``cutoff`` (all of them when None)."""
    if cutoff_angstrom is None:
        return True
    full = tuple(slice(None) for _ in shape)
    return exact_lowpass_mask(shape, voxel_size, cutoff_angstrom, full)


def _unit_field(shape: tuple[int, int, int], voxel_size, cutoff_angstrom: float | None, rng: np.random.Generator, falloff: float = 0.0) -> np.ndarray:
    """Gaussian noise of unit variance band-limited at ``cutoff`` (white when None), its power
    inside the band falling as ``exp(-falloff k^2 / 2)``."""
    white = rng.standard_normal(shape)
    if cutoff_angstrom is None and falloff == 0.0:
        return white
    spectrum = np.fft.rfftn(white) * _band(shape, voxel_size, cutoff_angstrom)
    if falloff != 0.0:
        spectrum *= np.exp(-falloff * _frequencies_squared(shape, voxel_size) / 4.0)
    field = np.fft.irfftn(spectrum, s=shape, axes=(0, 1, 2))
    return field / field.std()


def _frequencies(shape, voxel_size) -> list[np.ndarray]:
    """:func:`~occupy_dask.kernels.fourier.frequencies`, one broadcastable array per axis."""
    return [k.reshape([-1 if a == i else 1 for a in range(3)]) for i, k in enumerate(frequencies(shape, voxel_size))]


def _frequencies_squared(shape, voxel_size) -> np.ndarray:
    kz, ky, kx = _frequencies(shape, voxel_size)
    return kz * kz + ky * ky + kx * kx


def solvent_roughness(ids: np.ndarray, stats: np.ndarray, origins: np.ndarray, shape, tile_size: int, limit: float) -> tuple[float, int] | None:
    """How rough the noise is in the tiles that hold only confident solvent (largest value at
    most ``limit``) and lie wholly inside the inscribed ellipsoid (where the solvent model looks;
    a masked map's flat corners stay out): the squared steps between neighbours inside them over
    their squared deviations from their means, pooled (summed in tile order, whatever the
    blocks), and the number of such tiles; None with fewer than MIN_SOLVENT_TILES or no variation.
    ``origins`` are the tiles' first voxels, by id."""
    order = np.argsort(ids, kind="stable")
    ids, stats = ids[order], stats[order]
    first, last = origins[ids], origins[ids] + (tile_size - 1)
    tz, ty, tx = (np.maximum(t[first[:, a]], t[last[:, a]]) for a, t in enumerate(ellipsoid_terms(shape, (0, 0, 0), shape)))
    inside = (tz + ty) + tx <= 1.0  # each axis term is largest at one end of the tile
    solvent = stats[(stats[:, 3] <= limit) & inside]
    deviations = float(np.sum(solvent[:, 1] - solvent[:, 0] * solvent[:, 0] / tile_size**3))
    if len(solvent) < MIN_SOLVENT_TILES or not deviations > 0:
        return None
    return float(np.sum(solvent[:, 2])) / deviations, len(solvent)


def fit_falloff(roughness: float, shape, voxel_size, cutoff_angstrom: float | None, tile_size: int) -> float | None:
    """The ``B`` [Å^2] for which noise band-limited at ``cutoff`` with power ``exp(-B k^2 / 2)``
    inside the band is as rough, in tiles of ``tile_size``, as measured (:func:`solvent_roughness`).

    For noise of power spectrum ``P`` (cycles per voxel ``f``), a tile's expected squared steps
    are ``T^2 (T - 1) sum P 4 sin^2(pi f_a)`` (summed over the axes) and its squared deviations
    from its mean ``T^3 sum P (1 - W^2)``, ``W`` the tile mean's transfer function (a product
    of Dirichlet kernels); their ratio falls as ``B`` grows. Solved by bisection between the
    falloffs that change the power at the band's edge by FALLOFF_RANGE either way; None when the
    roughness lies outside what they give (solvent that is not noise of this band: masked,
    flattened or filtered)."""
    band = np.broadcast_to(_band(shape, voxel_size, cutoff_angstrom), (shape[0], shape[1], shape[2] // 2 + 1))
    k2 = np.broadcast_to(_frequencies_squared(shape, voxel_size), band.shape)[band]
    cycles = [np.broadcast_to(k * d, band.shape)[band] for k, d in zip(_frequencies(shape, voxel_size), voxel_size)]
    x_cycles = np.broadcast_to(np.fft.rfftfreq(shape[2]).reshape(1, 1, -1), band.shape)[band]
    weight = np.where((x_cycles == 0) | (x_cycles == 0.5), 1.0, 2.0)  # the half spectrum stands for both halves
    steps = (tile_size - 1) / tile_size * sum(4.0 * np.sin(np.pi * f) ** 2 for f in cycles)
    mean_transfer = np.prod([_dirichlet(f, tile_size) for f in cycles], axis=0)
    deviations = 1.0 - mean_transfer * mean_transfer

    def ratio(b: float) -> float:
        power = weight * np.exp(-b * (k2 - k2.max()) / 2.0)  # scaled: no overflow at the band's edge
        return float(np.sum(power * steps) / np.sum(power * deviations))

    reach = 2.0 * math.log(FALLOFF_RANGE) / float(k2.max())
    lo, hi = -reach, reach
    if not ratio(hi) < roughness < ratio(lo):
        return None
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) > roughness else (lo, mid)
    return 0.5 * (lo + hi)


def _dirichlet(f: np.ndarray, t: int) -> np.ndarray:
    """Transfer function of the mean of ``t`` neighbouring voxels at ``f`` cycles per voxel."""
    small = np.abs(np.sin(np.pi * f)) < 1e-12
    return np.where(small, 1.0, np.sin(np.pi * f * t) / (t * np.where(small, 1.0, np.sin(np.pi * f))))


def _simulation_box(voxel_size) -> tuple[int, int, int]:
    """A box of about SIMULATION_VOXELS voxels, each edge the same length in Å."""
    edge = (SIMULATION_VOXELS * math.prod(voxel_size)) ** (1.0 / 3.0)
    return tuple(max(16, int(round(edge / v))) for v in voxel_size)


def _kernel_samples(field: np.ndarray, kernel: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n_centres, n_v) values of ``field`` under the kernel around each centre."""
    strides = np.array([field.shape[1] * field.shape[2], field.shape[2], 1])  # in elements: flat indices, one gather
    offsets = (np.argwhere(kernel) - np.array(kernel.shape) // 2) @ strides
    return field.reshape(-1)[(centres @ strides)[:, None] + offsets[None, :]].astype(np.float32)


def texture_kappa(means: np.ndarray, variances: np.ndarray, mu: float, sigma: float, excess: float) -> float:
    """Texture size relative to the signal maximum, from tiles' means and variances: with signal
    ``v (1 + kappa (z - max z))`` a tile's signal has sd ``v kappa`` and mean ``v (1 - kappa
    excess)`` (``excess``: mean of ``max z - z`` over kernels), so ``r = sd / mean`` gives
    ``kappa = r / (1 + r excess)``. The median over the tiles."""
    sd = np.sqrt(np.clip(np.asarray(variances, np.float64) - sigma**2, 0.0, None))
    level = np.asarray(means, np.float64) - mu
    ratio = np.where(level > 0, sd / np.where(level > 0, level, 1.0), 0.0)
    return float(np.median(ratio / (1.0 + ratio * excess)))


def noise_floor_model(
    *,
    kernel: np.ndarray,
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    lowpass_applied: bool,
    occupancy_mode: bool,
    resolution_angstrom: float | None,
    mu: float,
    sigma_lowpass: float,
    tile_means: np.ndarray,
    tile_variances: np.ndarray,
    s_max: float,
    value_max: float,
    roughness: tuple[float, int] | None = None,
    tile_size: int = 0,
) -> NoiseFloor:
    """Simulate the response of the maximum filter to this map's noise and signal texture and
    tabulate its inverse (see the module docstring). ``value_max`` is the largest value of the
    scale data (the table reaches it); ``roughness`` (:func:`solvent_roughness` in tiles of
    ``tile_size``), when measured, shapes the noise's spectrum inside the band."""
    rng = np.random.default_rng(SIMULATION_SEED)
    box = _simulation_box(voxel_size)
    if occupancy_mode and lowpass_applied:
        cutoff, correlation = lowpass_angstrom, f"low-passed at {lowpass_angstrom:.3g} Å as the scale data"
    elif resolution_angstrom is not None and resolution_angstrom > 2.0 * min(voxel_size):
        cutoff, correlation = resolution_angstrom, f"flat up to the resolution {resolution_angstrom:.3g} Å"
    else:
        cutoff, correlation = None, "white (flat up to Nyquist; give --resolution if the map is band-limited)"
    falloff, solvent_tiles, spectrum = 0.0, 0, "flat, not measured"
    if roughness is not None:
        fitted = fit_falloff(roughness[0], box, voxel_size, cutoff, tile_size)
        if fitted is None:
            spectrum = (
                f"flat: the roughness of the {roughness[1]} tiles of confident solvent ({roughness[0]:.4g}) lies outside what noise "
                f"of this band can have with up to {FALLOFF_RANGE:g}x less or more power at its edge; masked, flattened or filtered solvent?"
            )
        else:
            falloff, solvent_tiles, spectrum = fitted, roughness[1], f"measured in {roughness[1]} tiles of confident solvent"
    noise = _unit_field(box, voxel_size, cutoff, rng, falloff)
    texture = _unit_field(box, voxel_size, cutoff, rng)
    sigma = float(sigma_lowpass)
    if cutoff != lowpass_angstrom and lowpass_applied:  # raw-mode noise: wider than the low-passed noise the model saw
        white = np.random.default_rng(SIMULATION_SEED).standard_normal(box)
        sigma = float(sigma_lowpass / _lowpass_std(white, voxel_size, lowpass_angstrom, cutoff))
    half = np.array(kernel.shape) // 2
    span = np.array(box) - 2 * half
    centres = half + (rng.random((SIMULATION_KERNELS, 3)) * span).astype(np.int64)
    noise_k = _kernel_samples(noise, kernel, centres)
    texture_k = _kernel_samples(texture, kernel, centres)
    texture_k -= texture_k.max(axis=1, keepdims=True)
    excess = float(-texture_k.mean())
    kappa = texture_kappa(tile_means, tile_variances, mu, sigma, excess)

    reach = max(value_max, s_max) - mu
    levels = np.linspace(0.0, 1.25 * max(reach, 8.0 * sigma), RESPONSE_POINTS)
    shape = (1.0 + kappa * texture_k).astype(np.float32)
    noise_k *= np.float32(sigma)
    response = np.median(kernel_maxima(levels, shape, noise_k), axis=1).astype(np.float64) + mu
    response = np.maximum.accumulate(response)
    floor = float(response[0])
    table_m = np.linspace(response[0], response[-1], TABLE_POINTS)
    strictly = np.concatenate(([True], np.diff(response) > 0))  # np.interp needs increasing x
    table = np.interp(table_m, response[strictly], levels[strictly]).astype(np.float32)
    model = NoiseFloor(
        mu=float(mu),
        sigma=sigma,
        correlation=correlation,
        kappa=kappa,
        texture_tiles=int(len(tile_means)),
        falloff=falloff,
        solvent_tiles=solvent_tiles,
        spectrum=spectrum,
        floor=floor,
        signal_levels=levels,
        response=response,
        noise_maxima=(noise_k.max(axis=1).astype(np.float64) + mu),
        table_start=float(table_m[0]),
        table_step=float(table_m[1] - table_m[0]),
        table=table,
        offset=float(response[-1] - levels[-1]),
    )
    return replace(model, signal_max=model.signal(s_max))


def _lowpass_std(white: np.ndarray, voxel_size, lowpass_angstrom: float, cutoff: float | None) -> float:
    """Standard deviation, after the low-pass, of unit noise band-limited at ``cutoff``."""
    band = _band(white.shape, voxel_size, cutoff)
    spectrum = np.fft.rfftn(white) * band
    full = np.fft.irfftn(spectrum, s=white.shape, axes=(0, 1, 2))
    low = np.fft.irfftn(spectrum * _band(white.shape, voxel_size, lowpass_angstrom), s=white.shape, axes=(0, 1, 2))
    return float(low.std() / full.std())


def top_tiles(ids: np.ndarray, sums: np.ndarray, n_values: int, count: int = TEXTURE_TILES) -> tuple[np.ndarray, np.ndarray]:
    """Means and variances of the ``count`` tiles of highest mean (ties: lowest id) from
    per-tile (sum, sum of squares) of ``n_values`` values each."""
    means = sums[:, 0] / n_values
    variances = np.maximum(sums[:, 1] / n_values - means * means, 0.0)
    order = np.lexsort((ids, -means))[:count]
    return means[order], variances[order]
