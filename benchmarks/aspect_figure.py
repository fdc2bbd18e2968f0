"""Write docs/figures/aspect.png: one HAM10000 image under each ``aspect`` setting.

    python benchmarks/aspect_figure.py [--image PATH] [--size 128] [--out docs/figures/aspect.png]

Without ``--image`` it uses ISIC_0024306 from ../shared/data/ham10000/images_200x150.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from melalib.plots import aspect_plot

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared/data/ham10000/images_200x150/ISIC_0024306.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(DEFAULT))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default=str(REPO / "docs/figures/aspect.png"))
    args = parser.parse_args()
    aspect_plot(args.image, size=args.size, save=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
