"""Write a small synthetic dataset in the nnU-Net v2 raw layout (see autoseg/toy.py).

Example: python data_templates/make_toy_dataset.py work/raw --modality MR --channels 2 --anisotropic
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder that receives DatasetXXX_Name/ (e.g. a workspace's raw/)")
    parser.add_argument("--cases", type=int, default=8, help="training cases (default 8)")
    parser.add_argument("--test-cases", type=int, default=0, help="extra cases in imagesTs/ + labelsTs/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", choices=["CT", "MR"], default="CT")
    parser.add_argument("--channels", type=int, default=1, help="MR sequences per case (CT: 1)")
    parser.add_argument("--labels", type=int, default=3, help="foreground classes (1-6)")
    parser.add_argument("--anisotropic", action="store_true", help="~0.8 x 0.8 x 4 mm voxels, fewer slices")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 32), metavar=("X", "Y", "Z"),
                        help="base grid size; each case varies by +-20%%")
    parser.add_argument("--regions", action="store_true", help="BraTS-like nested region labels")
    parser.add_argument("--name", help="dataset folder name (default Dataset999_Toy<modality>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)

    from autoseg.toy import make_toy_dataset

    try:
        path = make_toy_dataset(args.out_dir, n_cases=args.cases, seed=args.seed, modality=args.modality,
                                n_channels=args.channels, anisotropic=args.anisotropic, shape=tuple(args.shape),
                                regions=args.regions, name=args.name, n_test=args.test_cases,
                                n_labels=args.labels, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        parser.error(str(e))
    print(path)
    return path


if __name__ == "__main__":
    main()
