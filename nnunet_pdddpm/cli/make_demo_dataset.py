"""``nnunet_pdddpm_make_demo_dataset``: write the synthetic WMH demo dataset into nnU-Net's raw folder."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from nnunet_pdddpm.cli.spellings import REMOVED_IN, parse_args
from nnunet_pdddpm.errors import PDDDPMUserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_pdddpm_make_demo_dataset",
        description=(
            "Generate a synthetic white-matter-hyperintensity dataset (FLAIR + T1, 3 mm axial slices, binary "
            "lesion labels) in nnU-Net v2 raw format, from the MNI152 template shipped with nilearn. Needs no "
            "download; the same seed gives the same data. Training cases go to imagesTr/labelsTr, test cases "
            "to imagesTs with their reference labels in labelsTs."
        ),
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="nnU-Net raw folder to write Dataset<ID>_<NAME>/ into (default: $nnUNet_raw).",
    )
    parser.add_argument(
        "-profile",
        choices=("tiny", "cpu", "small", "gpu", "full"),
        default="small",
        help="Size (default: small): tiny = 6+2 cases at 50x60x12 (the tests' set, seconds); cpu = 16+4 cases "
        "at 58x70x20 (nnunet_pdddpm_demo -profile cpu); small = 20+5 cases at 2x2x3 mm, 90x108x60; gpu = 40+10 "
        "cases at 1x1x3 mm, 180x216x60 (nnunet_pdddpm_demo -profile gpu). 'full' is the old name of gpu.",
    )
    parser.add_argument(
        "-seed", type=int, default=0, help="Random seed (default: 0); the same seed gives identical images."
    )
    parser.add_argument(
        "-d", "--dataset_id", type=int, default=987, help="nnU-Net dataset id, 1 to 999 (default: 987)."
    )
    parser.add_argument(
        "-n", "--name", default="PDDDPMDemo",
        help="Dataset name (default: PDDDPMDemo); the folder is Dataset<ID>_<NAME>.",
    )
    parser.add_argument(
        "-num_train", type=int, default=None, help="Number of training cases (default: the profile's)."
    )
    parser.add_argument("-num_test", type=int, default=None, help="Number of test cases (default: the profile's).")
    parser.add_argument(
        "-np",
        "--num_processes",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="Cases made in parallel (default: CPU count, at most 8); the output does not depend on it.",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    if args.profile == "full":
        print(f"warning: -profile full is deprecated and will be removed in {REMOVED_IN}; use -profile gpu.",
              file=sys.stderr)
        args.profile = "gpu"
    # Imported here so that --help and argument errors answer without loading SimpleITK and nnU-Net.
    from nnunet_pdddpm.demo.dataset import (
        check_dataset_id,
        check_dataset_name,
        check_output_folder,
        make_demo_dataset,
        resolve_profile,
    )

    output = args.output or os.environ.get("nnUNet_raw")
    if not output:
        raise PDDDPMUserError("No output folder: set the nnUNet_raw environment variable or pass -o/--output.")
    check_dataset_id(args.dataset_id)
    check_dataset_name(args.name)
    overrides = {k: getattr(args, k) for k in ("num_train", "num_test") if getattr(args, k) is not None}
    profile = resolve_profile(dataclasses.replace(resolve_profile(args.profile), **overrides), args.seed)
    if args.num_processes < 1:
        raise PDDDPMUserError(f"-np/--num_processes must be at least 1, got {args.num_processes}.")
    root = check_output_folder(output)

    folder = make_demo_dataset(
        root, profile, dataset_id=args.dataset_id, dataset_name=args.name, num_processes=args.num_processes
    )

    print(f"Demo dataset ({profile.num_train} training + {profile.num_test} test cases) is in {folder}")
    raw = os.environ.get("nnUNet_raw")
    if raw is None or Path(raw).resolve() != root.resolve():
        print(f"Point nnU-Net at it first: export nnUNet_raw={root.resolve()}")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d 3d_fullres --verify_dataset_integrity")


if __name__ == "__main__":
    main()
