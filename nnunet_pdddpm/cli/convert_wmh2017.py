"""``nnunet_pdddpm_convert_wmh2017``: the WMH 2017 challenge data as an nnU-Net raw dataset (and the paper's split)."""
from __future__ import annotations

import argparse

from nnunet_pdddpm.cli.spellings import parse_args
from nnunet_pdddpm.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_pdddpm_convert_wmh2017",
        description=(
            "Convert the MICCAI 2017 WMH Segmentation Challenge data (doi:10.34894/AECRSD) into "
            "$nnUNet_raw/Dataset<ID>_<NAME>: imagesTr/imagesTs (<case>_0000.nii.gz = pre/FLAIR, _0001 = pre/T1, "
            "copied byte for byte, not resampled), labelsTr/labelsTs (1 = WMH; label 2, other pathology, "
            "becomes 0), otherPathologyTr/otherPathologyTs (the label-2 masks, for nnunet_pdddpm_evaluate "
            "-exclude), dataset.json and wmh2017_sources.json. Case ids are the source path joined by '_' "
            "(e.g. Amsterdam_GE3T_100). The dataset is built in a hidden folder and renamed into place when "
            "complete."
        ),
    )
    parser.add_argument(
        "-i", "--input", required=True, metavar="WMH_ROOT",
        help="The unpacked data: a folder with training/ and/or test/, each holding <site>[/<scanner>]/<case>/ "
        "with pre/FLAIR.nii.gz, pre/T1.nii.gz and wmh.nii.gz. A training/ or test/ folder alone is read as "
        "that subset; any other folder of site folders (the 2017 training release) as training cases.",
    )
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="nnU-Net dataset id, 1 to 999.")
    parser.add_argument("-n", "--name", default="WMH2017",
                        help="Dataset name (default: WMH2017); the folder is Dataset<ID>_<NAME>.")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Replace an existing Dataset<ID>_<NAME> in $nnUNet_raw (and, with -paper_split, an existing "
        "split). Without it an existing dataset is an error. A different name with the same id is always refused.",
    )
    parser.add_argument(
        "-paper_split", type=int, default=None, metavar="SEED",
        help="Also write the paper's split of the training cases (5 random folds: 3 train, 1 validation, 1 test; "
        "permutation by numpy.random.default_rng(SEED)) into $nnUNet_preprocessed/Dataset<ID>_<NAME>/: "
        "splits_final.json with one entry {train, val} (nnU-Net's fold 0) and paper_test_cases.json "
        "({seed, test}: the test fold's case ids, which stay in imagesTr but are in neither list).",
    )
    parser.add_argument("--disable_progress_bar", action="store_true", help="No progress bar over cases.")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    # Imported here so that --help and argument errors answer without loading SimpleITK and nnU-Net.
    from nnunet_pdddpm.datasets import (
        check_split_target,
        convert_wmh2017,
        dataset_target,
        env_folder,
        find_wmh_cases,
        paper_split,
        write_paper_split,
    )

    raw = env_folder("nnUNet_raw")
    cases = find_wmh_cases(args.input)
    target = dataset_target(raw, args.dataset_id, args.name, args.overwrite)
    split = split_folder = None
    if args.paper_split is not None:
        split_folder = env_folder("nnUNet_preprocessed") / target.name
        split = paper_split([c.identifier for c in cases if c.subset == "Tr"], args.paper_split)
        check_split_target(split_folder, args.overwrite)

    convert_wmh2017(cases, target, show_progress=not args.disable_progress_bar)
    n_train = sum(c.subset == "Tr" for c in cases)
    print(f"{target}: {n_train} training and {len(cases) - n_train} test case(s).")
    if split is not None:
        splits, test = write_paper_split(split_folder, split)
        print(f"Paper split (seed {split.seed}): {len(split.train)} train / {len(split.val)} val in {splits} "
              f"(fold 0), {len(split.test)} test cases in {test}.")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d --verify_dataset_integrity")


if __name__ == "__main__":
    main()
