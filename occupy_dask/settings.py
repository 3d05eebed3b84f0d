"""Derived settings of the method (docs/method.md section 2), computed once into one frozen object.

Every array axis here is in *stored* order (sections, rows, columns) as ``mrcfile`` returns the
data; ``voxel_size`` is given per stored axis in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import SettingsError

ANISOTROPY_TOLERANCE = 1e-3
DEFAULT_TILE_SIZE = 12
REFERENCE_TILE_GRID = 20
DEFAULT_CHUNK_EDGE = 256
SLAB_BYTES = 32 << 20  # default blocks: whole (y, x) planes, about this many bytes...
MAX_SLAB_BYTES = 64 << 20  # ...or MIN_SLAB_PLANES planes up to this many bytes
MIN_SLAB_PLANES = 16  # thinner slabs re-read too much halo; use cubes then
MIN_SLABS = 8  # smaller maps are still cut into this many slabs (of at least MIN_SLAB_PLANES): every core stays busy and a task's buffers stay small
KERNEL_SIZE_RANGE = (3, 9)


@lru_cache(maxsize=4096)
def tau_for_kernel(n_voxels: int) -> float:
    """Percentile for the full-scale reference: root in (0, 1) of ``x**n + x - 1``, 4 decimals."""
    if n_voxels < 1:
        raise SettingsError(f"kernel must contain at least one voxel, got {n_voxels}")
    if n_voxels == 1:
        return 0.5
    return round(increasing_root(lambda x: x**n_voxels + x - 1.0, 0.0, 1.0), 4)


def increasing_root(f, lo: float, hi: float) -> float:
    """The root of an increasing ``f`` with ``f(lo) < 0 < f(hi)``, by bisection down to adjacent
    floats (about 60 halvings on [0, 1]): as exact as ``f`` itself, without importing
    scipy.optimize (0.1-0.16 s, on every run's critical path) for one root."""
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            return lo if abs(f(lo)) <= abs(f(hi)) else hi
        if f(mid) < 0.0:
            lo = mid
        else:
            hi = mid


def odd_kernel_size(length_voxels: float) -> int:
    """``2*(k//2)+1`` of ``k = floor(length)``: the odd size that the reference uses."""
    k = int(math.floor(length_voxels + 1e-9))
    return 2 * (k // 2) + 1


def ball_kernel(size: tuple[int, int, int], radius: tuple[float, float, float]) -> np.ndarray:
    """Boolean ellipsoid (a ball when isotropic) in a box of ``size`` voxels, centred.

    A voxel is in when ``sum(((i - c) / r)**2) <= 1`` with ``c = (size - 1)/2`` per axis; for an
    isotropic radius this is ``distance <= radius`` as in the reference.
    """
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in size], indexing="ij")
    if len(set(radius)) == 1:
        dist2 = sum(g.astype(np.float64) ** 2 for g in grids)
        return dist2 <= float(radius[0]) ** 2
    return sum((g / r) ** 2 for g, r in zip(grids, radius)) <= 1.0 + 1e-12


@dataclass(frozen=True)
class Modification:
    """One way of changing the map by its local scale (docs/method.md section 8).

    ``kind`` is "amplify" or "attenuate" (factor ``S_t**exponent``, ``exponent = -amount``),
    "sigmoid" (factor ``f(S)/S``) or "exclude" (solvent exclusion alone, factor 1).
    ``tag`` names its output file when several are written (the reference's prefixes).
    """

    kind: str
    exponent: float = 0.0
    power: float | None = None
    pivot: float | None = None
    tag: str = ""

    @property
    def amount(self) -> float:
        return -self.exponent

    @property
    def removes_density(self) -> bool:
        """Attenuation and the sigmoid: the modifications with a subtraction mask (what they keep)."""
        return self.kind in ("attenuate", "sigmoid")

    def describe(self) -> str:
        """The modification in a few words, for map headers, the log and plots."""
        if self.kind == "sigmoid":
            return f"sigmoid power {self.power:g} pivot {self.pivot:g}"
        if self.kind == "exclude":
            return "input"
        return f"{'amplified' if self.kind == 'amplify' else 'attenuated'}, amount {self.amount:.3g}"


def _gamma_tag(prefix: str, gamma: float) -> str:
    return f"{prefix}_{gamma:.1f}"


def modifications_from_options(
    *,
    amplify: bool = False,
    attenuate: bool = False,
    amplify_amount: float | None = None,
    gamma: float | None = None,
    sigmoid: float | None = None,
    pivot: float | None = None,
    exclude_solvent: bool = False,
) -> tuple[Modification, ...]:
    """The modifications that the seed's and the later OccuPy's flags ask for.

    ``--amplify`` uses ``amplify_amount`` (default 1; in [-1, 1], below -1 allowed) or, with
    ``gamma`` G > 1, the amount ``1 - 1/G``; ``--attenuate`` uses amount -1, ``1 - G`` with
    ``gamma``, or a negative ``amplify_amount``. Conflicting flags raise SettingsError.
    """
    if amplify_amount is not None and not amplify and not attenuate:
        amplify = True  # an amount asks for the modification it names
    if gamma is not None:
        if not (gamma > 1 and math.isfinite(gamma)):
            raise SettingsError(f"--gamma must be larger than 1, got {gamma}")
        if amplify_amount is not None:
            raise SettingsError("--gamma and --amplify-amount are two spellings of the same setting; give one")
        if not (amplify or attenuate):
            raise SettingsError("--gamma needs --amplify or --attenuate")
    if amplify_amount is not None:
        if not math.isfinite(amplify_amount):
            raise SettingsError(f"--amplify-amount must be a number, got {amplify_amount}")
        if amplify_amount > 1:
            raise SettingsError(f"--amplify-amount must be at most 1 (1 raises every confident partial occupancy to full), got {amplify_amount}")
        if amplify and attenuate:
            raise SettingsError("--amplify-amount with both --amplify and --attenuate is ambiguous; use --gamma or two runs")
        if attenuate and amplify_amount > 0:
            raise SettingsError(f"--attenuate needs a negative --amplify-amount, got {amplify_amount}")
    out: list[Modification] = []
    if amplify:
        if gamma is not None:
            amount, tag = 1.0 - 1.0 / gamma, _gamma_tag("ampl", gamma)
        else:
            amount = 1.0 if amplify_amount is None else float(amplify_amount)
            tag = _gamma_tag("ampl", 1.0 / (1.0 - amount)) if amount < 1 else "ampl_inf"
            if amount < 0:
                tag = _gamma_tag("attn", 1.0 - amount)
        exponent = (1.0 / gamma - 1.0) if gamma is not None else -amount
        out.append(Modification("amplify" if amount >= 0 else "attenuate", exponent=exponent, tag=tag))
    if attenuate:
        if gamma is not None:
            exponent, tag = gamma - 1.0, _gamma_tag("attn", gamma)
        else:
            amount = -1.0 if amplify_amount is None else float(amplify_amount)
            exponent, tag = -amount, _gamma_tag("attn", 1.0 - amount)
        out.append(Modification("attenuate", exponent=exponent, tag=tag))
    if sigmoid is not None or pivot is not None:
        if sigmoid is None or pivot is None:
            raise SettingsError("--sigmoid P needs --pivot Q (and --pivot needs --sigmoid)")
        if not (sigmoid >= 1 and math.isfinite(sigmoid)):
            raise SettingsError(f"--sigmoid must be at least 1, got {sigmoid}")
        if not 0 < pivot < 1:
            raise SettingsError(f"--pivot must lie strictly between 0 and 1, got {pivot}")
        out.append(Modification("sigmoid", power=float(sigmoid), pivot=float(pivot), tag=f"sigm_{sigmoid:.1f}-{pivot:.2f}"))
    if not out and exclude_solvent:
        out.append(Modification("exclude"))
    tags = [m.tag for m in out]
    if len(set(tags)) != len(tags):
        raise SettingsError(f"two modifications would write the same map ({', '.join(tags)})")
    return tuple(out)


def check_scale_limit(scale_limit: float) -> None:
    """The amplify limit is a scale: it must lie in [0, 1)."""
    if not (0.0 <= scale_limit < 1.0):
        raise SettingsError(f"--amplify-limit must lie in [0, 1), got {scale_limit}")


def check_max_box(max_box: int | None) -> None:
    """``--max-box`` must be an even box of at least 16 voxels (None: no preview)."""
    if max_box is not None and (max_box < 16 or max_box % 2):
        raise SettingsError(f"--max-box must be even and at least 16 voxels, got {max_box}")


def is_isotropic(voxel_size: tuple[float, float, float]) -> bool:
    """Voxel sizes that differ by at most 0.1% count as one size (docs/method.md section 2)."""
    return max(voxel_size) / min(voxel_size) - 1.0 <= ANISOTROPY_TOLERANCE


@dataclass(frozen=True)
class Settings:
    """Every setting of one run of the method, derived once (docs/method.md section 2).

    Lengths named ``*_angstrom`` are in Å, ``*_voxels`` in voxels; 3-tuples are per stored axis.
    """

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    lowpass_angstrom: float
    lowpass_applied: bool
    kernel_size: tuple[int, int, int]
    kernel_radius_voxels: tuple[float, float, float]
    n_v: int
    tau: float
    tile_size: int
    tile_grid: int | None
    scale_mode: str  # "res" (raw input) or "occ" (low-passed input)
    hedge_confidence: float | None = None
    nlrc: bool = False
    debias: bool = False  # scale measured above the noise floor (occupy_dask.debias)
    reference_compatible: bool = False
    chunk_edge: int | None = None  # None: automatic (slabs of whole planes, or 256^3 cubes)
    fitted_planes: int | None = None  # automatic chunks made smaller to fit the memory: slabs of this many planes...
    fitted_bar: int | None = None  # ...or bars of this many planes and rows, all columns...
    fitted_edge: int | None = None  # ...or cubes of this edge
    resolution_angstrom: float | None = None
    # modification (docs/method.md section 8)
    modifications: tuple[Modification, ...] = ()
    scale_limit: float = 0.05
    exclude_solvent: bool = False
    lowpass_output_angstrom: float | None = None
    seed: int = 0
    s0: bool = False  # OccuPy's --S0: the full-scale reference is tau x the largest scale-data value, no tiles
    omit_confidence: bool = False  # modify without weighting by the confidence (solvent is modified too)
    hist_match: bool = False  # each modified map histogram-matched to the input
    subtraction_masks: bool = False  # also write the subtraction mask of each attenuation or sigmoid
    max_box: int | None = None  # --max-box: estimate on the map Fourier-cropped to at most this box
    full_shape: tuple[int, int, int] | None = None  # the input's box when this map is its cropped preview
    # fixed thresholds of the method (logged)
    solvent_def_threshold: float = 0.9  # --solvent-def voxels above it are solvent
    target_threshold: float = 0.5  # --target-mask voxels above it are the target
    flattened_fraction: float = 0.2  # more exact zeros inside the inscribed sphere: flattened, no solvent noise
    noise_power_ratio: float = 1.5  # a low-pass keeping less than this many times white noise's power: noise alone

    @property
    def isotropic(self) -> bool:
        return is_isotropic(self.voxel_size)

    @property
    def clips_modified_in_pass(self) -> bool:
        """Whether the fused pass clips the modified maps to the input's range: not when a later
        stage makes them (a low-pass, the way back from a --max-box preview, or --hist-match)."""
        return not (self.lowpass_output_angstrom or self.hist_match or self.full_shape)

    @property
    def halo(self) -> tuple[int, int, int]:
        """Voxels of context each side of a chunk: ``kernel_size // 2`` per axis."""
        return tuple(k // 2 for k in self.kernel_size)

    @property
    def kernel(self) -> np.ndarray:
        return ball_kernel(self.kernel_size, self.kernel_radius_voxels)

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Block shape of the fused pass. ``--chunks N``: cubes of edge N. By default slabs of
        whole (y, x) planes of about 32 MB, at least 16 planes of up to 64 MB (smaller maps: at
        least 8 slabs of 16 planes or more), which are contiguous in the file and so read and
        written in one piece; cubes of 256 when 16 planes hold more than 64 MB. Under a memory
        limit that these do not fit, thinner slabs, bars of whole rows or smaller cubes
        (``fitted_planes``, ``fitted_bar``, ``fitted_edge``: see
        :func:`occupy_dask.cluster.fitted_chunks`)."""
        edge = self.chunk_edge or self.fitted_edge
        if edge is not None:
            return tuple(min(edge, n) for n in self.shape)
        nz, ny, nx = self.shape
        if self.fitted_planes is not None:
            return (min(self.fitted_planes, nz), ny, nx)
        if self.fitted_bar is not None:
            return (min(self.fitted_bar, nz), min(self.fitted_bar, ny), nx)
        plane = 4 * ny * nx
        planes = min(max(SLAB_BYTES // plane, MIN_SLAB_PLANES), max(MIN_SLAB_PLANES, -(-nz // MIN_SLABS)))
        if min(planes, nz) * plane <= MAX_SLAB_BYTES:
            return (int(min(planes, nz)), ny, nx)
        return tuple(min(DEFAULT_CHUNK_EDGE, n) for n in self.shape)

    @property
    def slabs(self) -> bool:
        """Whether the blocks are slabs of whole (y, x) planes (contiguous in the file)."""
        return tuple(self.chunks[1:]) == tuple(self.shape[1:])


@dataclass(frozen=True)
class RunOptions:
    """How one run reads, writes and keeps its data; none of it changes a number of the method."""

    output_dir: Path = Path(".")
    name: str | None = None  # the <name> in output file names (None: the input file's name)
    output_map: str | None = None  # the modified map's name (relative: inside output_dir)
    output_format: str | None = None  # mrc, zarr or ome.zarr (None: from output_map's suffix, else mrc)
    save_all_maps: bool = False  # also the low-passed input and each modification's factor
    save_chimerax: bool = True
    min_vis_scale: float | None = None  # lowest scale the ChimeraX colouring resolves (None: the confidence limit)
    emdb_entry: str | None = None  # the EMDB entry (digits) the input was fetched from; the ChimeraX script opens it from there
    plot: bool = False
    report: bool = False  # report_<name>.html: slices, plots and every number, in one file
    overwrite: bool = False
    temp_dir: str | None = None  # temporary files (gzip input, spilled maps); None: the system's
    allow_nonfinite: bool = False  # replace NaN and infinite voxels with the median of the finite ones
    spill_lowpass: bool | None = None  # keep the low-passed map on disk (None: when large or distributed)

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """Per-voxel outputs beyond scale, confidence and modified maps."""
        return ("lowpass", "factor") if self.save_all_maps else ()


def derive_settings(
    shape: tuple[int, int, int],
    voxel_size: float | tuple[float, float, float],
    *,
    resolution: float | None = None,
    lowpass: float | None = None,
    kernel_size: int | None = None,
    kernel_radius: float | None = None,
    tau: float | None = None,
    tile_size: int | None = None,
    tile_grid: int | None = None,
    occupancy: bool | None = None,
    hedge_confidence: float | None = None,
    nlrc: bool = False,
    debias: bool = False,
    reference_compatible: bool = False,
    chunks: int | None = None,
    amplify: bool = False,
    attenuate: bool = False,
    amplify_amount: float | None = None,
    gamma: float | None = None,
    sigmoid: float | None = None,
    pivot: float | None = None,
    scale_limit: float = 0.05,
    exclude_solvent: bool = False,
    lowpass_output: float | None = None,
    seed: int = 0,
    s0: bool = False,
    omit_confidence: bool = False,
    hist_match: bool = False,
    subtraction_masks: bool = False,
    max_box: int | None = None,
    full_shape: tuple[int, int, int] | None = None,
) -> Settings:
    """Derive every setting of docs/method.md section 2 from the map geometry and user choices.

    ``shape`` and ``voxel_size`` are in stored axis order; ``voxel_size`` in Å (a float means
    isotropic). User lengths ``kernel_size``/``kernel_radius`` are in voxels of the fastest axis.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise SettingsError(f"the map must be a 3D volume, got shape {shape}")
    if np.isscalar(voxel_size):
        voxel_size = (float(voxel_size),) * 3
    voxel_size = tuple(float(v) for v in voxel_size)
    if min(voxel_size) <= 0 or not all(math.isfinite(v) for v in voxel_size):
        raise SettingsError(f"voxel size must be positive, got {voxel_size} Å")
    isotropic = is_isotropic(voxel_size)
    if debias and reference_compatible:
        raise SettingsError("--debias has no counterpart in the reference; drop --reference-compatible (or --debias)")
    if debias and nlrc:
        raise SettingsError("--debias and --nlrc both correct the scale for noise; give one")
    if reference_compatible:
        if not isotropic:
            raise SettingsError(f"--reference-compatible needs isotropic voxels (the reference uses one voxel size), this map has {voxel_size} Å")
        if len(set(shape)) != 1:
            raise SettingsError(f"--reference-compatible needs a cubic box (as the reference), got {shape}")
    lowpass_angstrom = _lowpass_length(voxel_size, resolution, lowpass)
    lowpass_applied = lowpass_angstrom > 2.0 * min(voxel_size)
    sizes, radii, n_v = _kernel_shape(voxel_size, lowpass_angstrom, kernel_size, kernel_radius)
    if tau is not None and not 0.0 < tau < 1.0:
        raise SettingsError(f"--tau must lie strictly between 0 and 1, got {tau}")
    tau_value = float(tau) if tau is not None else tau_for_kernel(n_v)
    tile_size, tile_grid = _tiles(shape, tile_size, tile_grid, reference_compatible)

    modifications = modifications_from_options(
        amplify=amplify,
        attenuate=attenuate,
        amplify_amount=amplify_amount,
        gamma=gamma,
        sigmoid=sigmoid,
        pivot=pivot,
        exclude_solvent=exclude_solvent,
    )
    check_scale_limit(scale_limit)
    if lowpass_output is not None and not (lowpass_output > 2.0 * max(voxel_size) and math.isfinite(lowpass_output)):
        raise SettingsError(f"--lowpass-amplified must be longer than 2 voxels ({2.0 * max(voxel_size):.3g} Å), got {lowpass_output}")
    if occupancy is None:
        occupancy = any(m.kind != "exclude" for m in modifications)
    scale_mode = "occ" if occupancy else "res"

    check_max_box(max_box)
    if subtraction_masks and not any(m.removes_density for m in modifications):
        raise SettingsError("--subtraction-mask needs --attenuate or --sigmoid (the mask is what they remove)")
    if hedge_confidence is not None and not hedge_confidence > 1.0:
        raise SettingsError(f"--hedge-confidence must be larger than 1, got {hedge_confidence}")

    chunk_edge = None if chunks is None else int(chunks)
    halo_max = max(k // 2 for k in sizes)
    if chunk_edge is not None and chunk_edge < max(halo_max, 1):
        raise SettingsError(f"--chunks {chunk_edge} is smaller than the kernel halo ({halo_max} voxels)")

    return Settings(
        shape=shape,
        voxel_size=voxel_size,
        lowpass_angstrom=float(lowpass_angstrom),
        lowpass_applied=bool(lowpass_applied),
        kernel_size=sizes,
        kernel_radius_voxels=radii,
        n_v=n_v,
        tau=tau_value,
        tile_size=int(tile_size),
        tile_grid=None if tile_grid is None else int(tile_grid),
        scale_mode=scale_mode,
        hedge_confidence=hedge_confidence,
        nlrc=bool(nlrc),
        debias=bool(debias),
        reference_compatible=bool(reference_compatible),
        chunk_edge=chunk_edge,
        resolution_angstrom=resolution,
        modifications=modifications,
        scale_limit=float(scale_limit),
        exclude_solvent=bool(exclude_solvent),
        lowpass_output_angstrom=lowpass_output,
        seed=int(seed),
        s0=bool(s0),
        omit_confidence=bool(omit_confidence),
        hist_match=bool(hist_match),
        subtraction_masks=bool(subtraction_masks),
        max_box=None if max_box is None else int(max_box),
        full_shape=None if full_shape is None else tuple(int(n) for n in full_shape),
    )


def _lowpass_length(voxel_size, resolution: float | None, lowpass: float | None) -> float:
    """Section 2: the low-pass in Å, the larger of ``lowpass`` and ``resolution`` when both are
    given, else the one given, else ``max(8, 3 x the largest voxel size)``."""
    for name, value in (("resolution", resolution), ("lowpass", lowpass)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise SettingsError(f"--{name} must be a positive length in Å, got {value}")
        if value is not None and value < 2.0 * min(voxel_size):
            raise SettingsError(
                f"--{name} {value:g} Å is finer than 2 voxels ({2.0 * min(voxel_size):.3g} Å, the Nyquist limit of this map); "
                "no map holds detail beyond it"
            )
    given = [float(v) for v in (lowpass, resolution) if v is not None]
    return max(given) if given else max(8.0, 3.0 * max(voxel_size))


def _kernel_shape(voxel_size, lowpass_angstrom: float, kernel_size: int | None, kernel_radius: float | None):
    """Section 2: per-axis kernel box sizes and radii in voxels, and the kernel's voxel count. A
    user's size and radius are in voxels of the fastest axis, the reference's unit."""
    isotropic = is_isotropic(voxel_size)
    apix_x = voxel_size[2]
    if kernel_size is not None:
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise SettingsError(f"--kernel-size must be odd and at least 3, got {kernel_size}")
        sizes = tuple(max(3, odd_kernel_size(kernel_size * apix_x / v)) if not isotropic else kernel_size for v in voxel_size)
    else:
        lo, hi = KERNEL_SIZE_RANGE
        sizes = tuple(int(np.clip(odd_kernel_size(lowpass_angstrom / v), lo, hi)) for v in voxel_size)
    if kernel_radius is not None:
        if not (kernel_radius > 0 and math.isfinite(kernel_radius)):
            raise SettingsError(f"--kernel-radius must be positive, got {kernel_radius}")
        radii = tuple(float(kernel_radius) if isotropic else kernel_radius * apix_x / v for v in voxel_size)
    else:
        radii = tuple(lowpass_angstrom / (2.0 * v) for v in voxel_size)
    if isotropic:
        radii = (radii[2],) * 3
    n_v = int(ball_kernel(sizes, radii).sum())
    if n_v < 1:
        raise SettingsError(f"the kernel (size {sizes}, radius {radii} voxels) holds no voxel")
    return sizes, radii, n_v


def _tiles(shape, tile_size: int | None, tile_grid: int | None, reference_compatible: bool) -> tuple[int, int | None]:
    """Section 4: the tile edge and the reference's grid (None: non-overlapping tiles)."""
    if reference_compatible:
        tile_grid = REFERENCE_TILE_GRID if tile_grid is None else tile_grid
        tile_size = shape[0] // tile_grid if tile_size is None else tile_size
    if tile_size is None:
        tile_size = DEFAULT_TILE_SIZE if tile_grid is None else max(1, min(shape) // tile_grid)
    if tile_size < 1:
        raise SettingsError(f"--tile-size must be at least 1 voxel, got {tile_size}")
    if tile_size > min(shape):
        raise SettingsError(f"--tile-size {tile_size} is larger than the box {shape}")
    if tile_grid is not None:
        if tile_grid < 2:
            raise SettingsError(f"--tile-grid must be at least 2, got {tile_grid}")
        step = tile_size + (min(shape) - tile_grid * tile_size) // (tile_grid - 1)
        if step < 1:
            raise SettingsError(
                f"--tile-grid {tile_grid} tiles of {tile_size} voxels do not fit in the box {shape} "
                "(tiles may overlap, but not start at the same voxel)"
            )
    return int(tile_size), tile_grid
