"""What the installed Optimum Intel / NNCF accept, read from the libraries themselves.

    python -m workbench.methods.openvino.probe OUT.json      (in the `openvino` environment)

Runs once when the environment is created (`workbench env create openvino`); the kernel
reads the JSON it writes, so the `ov-weight` schema offers exactly the 4-bit data types,
sensitivity metrics and backup precisions this installation takes, without importing
OpenVINO in the kernel. A data type counts as accepted when `OVWeightQuantizationConfig`
validates it with `bits=4`: NNCF lists more modes (fp4, nvfp4, ...) than optimum-intel passes on.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def probe() -> dict:
    import nncf
    from nncf.parameters import CompressWeightsMode
    from optimum.intel import OVWeightQuantizationConfig

    candidates: list[str] = []
    for mode in CompressWeightsMode:
        name = str(mode.value)
        for suffix in ("_sym", "_asym"):
            name = name.removesuffix(suffix)
        if name not in candidates:
            candidates.append(name)

    def accepts(**kwargs: object) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                OVWeightQuantizationConfig(**kwargs)
            except Exception:  # noqa: BLE001 - a refusal is the answer being probed for
                return False
        return True

    return {
        "weight_dtypes_4bit": [n for n in candidates if n != "int8" and accepts(bits=4, dtype=n)],
        "nncf_modes": [str(m.value) for m in CompressWeightsMode],
        "sensitivity_metrics": [str(m.value) for m in nncf.SensitivityMetric],
        "backup_precisions": [str(m.value) for m in nncf.BackupMode
                              if accepts(bits=4, ratio=0.8, backup_precision=str(m.value))],
        "group_size_fallback": [str(m.value) for m in nncf.GroupSizeFallbackMode]
        if hasattr(nncf, "GroupSizeFallbackMode") else ["error", "ignore", "adjust"],
    }


def main(argv: list[str]) -> int:
    out = json.dumps(probe(), indent=2)
    if argv:
        Path(argv[0]).write_text(out)
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
