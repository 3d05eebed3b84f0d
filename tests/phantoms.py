"""Synthetic maps with known domain occupancies, for accuracy tests and benchmarks.

A phantom is a box of domains, each a ball of randomly placed atoms at one occupancy, blurred
(Gaussian B-factor) and low-passed to a resolution, plus low-passed Gaussian noise whose
standard deviation is a given fraction of the peak density of the fully occupied map. The truth
(each domain's occupancy and the voxels that hold its density) is kept beside the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np

ATOMS_PER_CUBIC_ANGSTROM = 0.05  # heavy atoms of a protein (about 0.8 Da/Å^3)
MIN_ATOM_DISTANCE = 1.4  # Å
DOMAIN_DENSITY_LEVEL = 0.3  # voxels where a domain's full-occupancy density exceeds this fraction of the peak are its voxels


@dataclass(frozen=True)
class PhantomSpec:
    """What a phantom holds: box edge [voxels], voxel size [Å], resolution [Å], noise level
    (standard deviation over the peak density of the fully occupied map), domain occupancies,
    and the noise's colour: its amplitude falls as ``exp(-noise_bfactor k^2 / 4)`` up to the
    resolution (0: flat; negative: rising, as in a sharpened map)."""

    name: str
    box: int
    voxel_size: float
    resolution: float
    noise: float
    occupancies: tuple[float, ...]
    seed: int
    domain_radius: float = 16.0  # Å
    noise_bfactor: float = 0.0  # Å^2


@dataclass
class Phantom:
    spec: PhantomSpec
    data: np.ndarray  # (box,)*3 float32: the map
    domains: np.ndarray  # (box,)*3 int8: domain index owning the voxel's density, -1 none
    occupancies: tuple[float, ...] = field(default=())

    def write(self, folder: Path) -> Path:
        """Write the map (MRC) and its truth (``<name>_truth.npz``: domain labels, occupancies)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.spec.name}.mrc"
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(self.data)
            mrc.voxel_size = self.spec.voxel_size
        np.savez_compressed(folder / f"{self.spec.name}_truth.npz", domains=self.domains, occupancies=np.array(self.occupancies))
        return path


def _domain_centres(n_domains: int, box_angstrom: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Centres [Å] of non-overlapping domain balls, close together around the box centre."""
    centre = box_angstrom / 2.0
    reach = box_angstrom / 2.0 - radius - 6.0  # every ball inside the inscribed sphere with a margin
    centres: list[np.ndarray] = []
    for _ in range(10000):
        candidate = centre + rng.uniform(-1, 1, 3) * reach
        if np.linalg.norm(candidate - centre) > reach:
            continue
        if all(np.linalg.norm(candidate - c) >= 2.0 * radius + 2.0 for c in centres):
            centres.append(candidate)
            if len(centres) == n_domains:
                return np.array(centres)
    raise ValueError(f"{n_domains} domains of radius {radius} Å do not fit in a {box_angstrom:.0f} Å box")


def _atoms_in_ball(radius: float, rng: np.random.Generator) -> np.ndarray:
    """Random atom positions [Å, about the ball's centre] at protein density, no two closer
    than MIN_ATOM_DISTANCE."""
    n = int(ATOMS_PER_CUBIC_ANGSTROM * 4.0 / 3.0 * math.pi * radius**3)
    points = rng.uniform(-radius, radius, (4 * n, 3))
    points = points[np.linalg.norm(points, axis=1) <= radius]
    cell = MIN_ATOM_DISTANCE
    keys = np.floor(points / cell).astype(np.int64)
    taken: dict[tuple[int, int, int], list[np.ndarray]] = {}
    kept = []
    for p, k in zip(points, map(tuple, keys)):
        near = (taken.get((k[0] + a, k[1] + b, k[2] + c), ()) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1))
        if any(np.linalg.norm(p - q) < MIN_ATOM_DISTANCE for group in near for q in group):
            continue
        taken.setdefault(k, []).append(p)
        kept.append(p)
        if len(kept) == n:
            break
    return np.array(kept)


def _splat(positions_voxels: np.ndarray, box: int) -> np.ndarray:
    """Trilinear deposit of unit atoms at fractional voxel positions."""
    grid = np.zeros((box,) * 3, np.float64)
    base = np.floor(positions_voxels).astype(np.int64)
    frac = positions_voxels - base
    for corner in np.ndindex(2, 2, 2):
        weight = np.prod(np.where(corner, frac, 1.0 - frac), axis=1)
        index = np.clip(base + np.array(corner), 0, box - 1)
        np.add.at(grid, tuple(index.T), weight)
    return grid


def _band_limit(volume: np.ndarray, voxel_size: float, resolution: float, bfactor: float) -> np.ndarray:
    """Blur by a B-factor and keep spatial frequencies up to ``1/resolution``."""
    box = volume.shape[0]
    k = np.fft.fftfreq(box, d=voxel_size)
    kx = np.fft.rfftfreq(box, d=voxel_size)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    transfer = np.exp(-bfactor * k2 / 4.0) * (k2 <= 1.0 / resolution**2)
    return np.fft.irfftn(np.fft.rfftn(volume) * transfer, s=volume.shape, axes=(0, 1, 2))


def make_phantom(spec: PhantomSpec, noise_seed: int | None = None) -> Phantom:
    """The map and its truth for ``spec`` (deterministic in ``spec.seed``); ``noise_seed``
    draws another realization of the noise on the same atoms."""
    rng = np.random.default_rng(spec.seed)
    box, apix = spec.box, spec.voxel_size
    bfactor = 4.0 * spec.resolution**2  # blur that matches the resolution (about 100 Å^2 at 5 Å)
    centres = _domain_centres(len(spec.occupancies), box * apix, spec.domain_radius, rng)
    unit = []
    for c in centres:
        atoms = (_atoms_in_ball(spec.domain_radius, rng) + c) / apix - 0.5  # voxel centres at i + 0.5 Å/apix
        unit.append(_band_limit(_splat(atoms, box), apix, spec.resolution, bfactor))
    full = sum(unit)
    peak = float(full.max())
    signal = sum(o * u for o, u in zip(spec.occupancies, unit)) / peak
    noise_rng = rng if noise_seed is None else np.random.default_rng([spec.seed, noise_seed])
    noise = _band_limit(noise_rng.standard_normal((box,) * 3), apix, spec.resolution, spec.noise_bfactor)
    noise *= spec.noise / noise.std()
    stacked = np.stack(unit)
    owner = np.argmax(stacked, axis=0).astype(np.int8)
    owner[stacked.max(axis=0) < DOMAIN_DENSITY_LEVEL * peak] = -1
    return Phantom(spec, (signal + noise).astype(np.float32), owner, tuple(spec.occupancies))


def relative_occupancies(scale: np.ndarray, domains: np.ndarray, occupancies) -> tuple[np.ndarray, np.ndarray]:
    """Each domain's median scale over its voxels divided by that of the most occupied domain,
    and the truth the same way (occupancy over the largest occupancy)."""
    medians = np.array([np.median(scale[domains == d]) for d in range(len(occupancies))])
    top = int(np.argmax(occupancies))
    truth = np.asarray(occupancies, float) / max(occupancies)
    return medians / medians[top], truth


# Phantoms that the estimator's design was chosen on, and phantoms it never saw (the test's
# held-out set; the benchmark prints both). The last of each set have coloured noise (the noise
# spectrum's fit was made on design_d).
DESIGN_SPECS = (
    PhantomSpec("design_a", 128, 1.0, 5.0, 0.2, (1.0, 0.6, 0.3), seed=11),
    PhantomSpec("design_b", 160, 1.2, 4.0, 0.1, (1.0, 0.8, 0.4, 0.2), seed=12),
    PhantomSpec("design_c", 144, 0.9, 6.0, 0.3, (0.9, 0.5, 0.25), seed=13),
    PhantomSpec("design_d", 144, 1.0, 5.0, 0.12, (1.0, 0.5, 0.3), seed=14, noise_bfactor=300.0),
)
HELD_OUT_SPECS = (
    PhantomSpec("heldout_a", 128, 0.8, 4.0, 0.15, (1.0, 0.4, 0.25), seed=101),
    PhantomSpec("heldout_b", 160, 1.1, 5.0, 0.25, (1.0, 0.7, 0.35), seed=102),
    PhantomSpec("heldout_c", 192, 1.3, 6.0, 0.1, (0.8, 0.6, 0.2), seed=103),
    PhantomSpec("heldout_d", 144, 1.0, 4.5, 0.3, (1.0, 0.5, 0.3, 0.2), seed=104),
    PhantomSpec("heldout_e", 128, 1.2, 5.5, 0.2, (0.7, 0.45, 0.3), seed=105),
    PhantomSpec("heldout_f", 256, 0.9, 5.0, 0.2, (1.0, 0.6, 0.3), seed=106),
    PhantomSpec("heldout_g", 160, 1.1, 4.5, 0.1, (1.0, 0.6, 0.3), seed=107, noise_bfactor=200.0),
    PhantomSpec("heldout_h", 128, 0.9, 5.0, 0.15, (1.0, 0.45, 0.25), seed=108, noise_bfactor=-150.0),
    PhantomSpec("heldout_i", 192, 1.2, 6.0, 0.1, (0.9, 0.6, 0.3), seed=109, noise_bfactor=500.0),
)
