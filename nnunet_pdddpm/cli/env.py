"""``nnunet_pdddpm_env``: print the shell line that lets nnU-Net's commands find our trainers."""
from __future__ import annotations

import argparse
import os
import shlex

from nnunet_pdddpm.discovery import ENV_VAR, extended_value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print `export nnUNet_extTrainer=...` so that nnUNetv2_train/nnUNetv2_predict find "
                    "PDDDPMTrainer and PDDDPMAttUNetTrainer. Use it as: eval \"$(nnunet_pdddpm_env)\"")
    parser.parse_args(argv)
    print(f"export {ENV_VAR}={shlex.quote(extended_value(os.environ.get(ENV_VAR)))}")


if __name__ == "__main__":
    main()
