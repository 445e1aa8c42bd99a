"""The Method contract.

A method is a plug-in (entry-point group `workbench.methods`). Its class
attributes and `schema` are read in the notebook kernel, so a method module
must import its backend library only inside `build()`: listing methods stays
instant and a missing library shows as "unavailable", not as an ImportError.

`build()` runs in a worker process, inside the method's environment family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from ..errors import ParamError
from ..params import Schema, Values

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext
    from ..models.catalog import ModelInfo
    from ..spec import RunSpec


@dataclass
class Built:
    """What `Method.build` returns: a runnable model and an honest account of what was done.

    model: an HF-style callable: `model(input_ids=..., attention_mask=...)` returns an
        object with `.logits` (causal LMs) or `.last_hidden_state` (encoders); causal LMs
        also offer `.generate(...)`.
    layers_quantized / layers_eligible: counted on the model, never assumed.
    kernel: the runtime path actually used (e.g. "torch fp32 eager",
        "rtn dequantize-on-the-fly (reference)").
    weights_bytes: bytes of the weights as stored by the backend; None lets the
        measurement count the tensors held by a torch model (packed buffers included).
    weights_bytes_claimed: what the backend itself reports (e.g. `get_memory_footprint()`),
        kept next to the measured figure where they may differ.
    reference_tolerance: set by exports and conversions that must reproduce the fp32 PyTorch
        model: perplexity within this relative tolerance (encoders: mean cosine >= 1 - it),
        else the run is flagged.
    metrics: timings the method measured itself, stored with the result (e.g. `compile_s`,
        `export_s`; a `quantize_s` or `load_s` here replaces the worker's own estimate).
    save: writes a reloadable artifact to a directory (for the on-disk size);
        None with `cannot_save` giving the reason.
    """

    model: Any
    layers_quantized: int
    layers_eligible: int
    kernel: str
    weights_bytes: int | None = None
    weights_bytes_claimed: int | None = None
    save: Callable[[Path], None] | None = None
    cannot_save: str | None = None
    reference_tolerance: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Method(ABC):
    """Base class of every quantization method (and of the unquantized baseline)."""

    name: ClassVar[str]
    backend: ClassVar[str]
    env: ClassVar[str] = "torch"
    description: ClassVar[str] = ""
    schema: ClassVar[Schema] = Schema()
    # Distributions that must be installed in the method's environment.
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    model_kinds: ClassVar[tuple[str, ...]] = ("causal-lm", "encoder")
    # False for methods that leave the weights as they are (the baseline).
    quantizes: ClassVar[bool] = True
    # Parameters without a usable default, which the user must give (a checkpoint's directory):
    # with the defaults alone, validation names them and the form keeps Run disabled.
    required: ClassVar[tuple[str, ...]] = ()
    # True: `model_errors` only runs when the model's Linear shapes are known (before loading they
    # are not, and build() checks the shapes on the loaded model instead).
    model_errors_need_layers: ClassVar[bool] = False

    def is_reference(self, params: Mapping[str, Any]) -> bool:
        """True when this configuration *is* the fp32 PyTorch reference (the baseline in fp32):
        its outputs are not compared with the reference, they become it."""
        return False

    def check_model(self, params: Mapping[str, Any], model: "ModelInfo") -> list[ParamError]:
        """Checks of the parameters against the model's shapes, without torch.

        Runs in the kernel before any worker starts (e.g. a group size that does
        not divide a layer's input dimension). Methods implement `model_errors`.
        """
        if type(self).model_errors is Method.model_errors:
            return []
        layers: Mapping[str, tuple[int, int]] = getattr(model, "linear_layers", None) or {}
        if not layers and self.model_errors_need_layers:
            return []
        p, errors = self.schema.errors(params)
        if errors:
            return []  # the schema's own errors are reported by whoever validated the params
        return self.model_errors(Values(p), layers, model)

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        """This method's own checks of valid parameters `p` against `model` (a `ModelInfo`);
        `layers` maps Linear layer names to their shapes (empty when unknown)."""
        return []

    def values(self, params: Mapping[str, Any]) -> Values:
        """`params` normalized; the `Values` a worker normalized once pass through unchanged."""
        return self.schema.normalize(params, self.name)

    def unavailable_reason(self, params: Mapping[str, Any], device: str) -> str | None:
        """Why this configuration cannot run on `device`, or None. Torch-free."""
        return None

    @abstractmethod
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        """Load and quantize the model (in the worker)."""

    def layer_quantizer(self, params: Mapping[str, Any]) -> "Callable[[Any], Any] | None":
        """weight -> the weight as this method would compute with it (quantized and dequantized),
        one layer at a time, for layer sensitivity (`workbench sensitivity`). None (the default):
        the method has no per-layer form. Called in the worker; `params` are normalized."""
        return None

    @classmethod
    def has_layer_quantizer(cls) -> bool:
        return cls.layer_quantizer is not Method.layer_quantizer

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        """Load what `Built.save` wrote to `path`, for the save-and-reload check.

        Runs in a fresh worker process; returns a model measured like `Built.model`.
        Methods that can save should implement it: the check catches artifacts that
        reload wrong (bitsandbytes fp4 was seen to reload with perplexity 2e9).
        """
        raise NotImplementedError(f"method {self.name!r} cannot reload what it saves")

    @classmethod
    def can_reload(cls) -> bool:
        return cls.load_saved is not Method.load_saved

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        """The plain code a user would write for this configuration without the workbench.

        It must run as shown in a fresh Python session of the method's environment: start it with
        `workbench.models.snippet.loadable(model_id, self.env).line()` (`model_id = '<directory or
        hub id>'`, never the catalog name) and build calibration data with `calibration_code(...)`.
        `params` are the normalized `Values` (the app, recommend and the contract normalize once
        before asking); `self.values(params)` passes them through.
        """
        return f"# {self.name}: no code template yet\n"

    @classmethod
    def info(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "backend": cls.backend,
            "env": cls.env,
            "description": cls.description,
            "devices": list(cls.devices),
            "model_kinds": list(cls.model_kinds),
            "requires": list(cls.requires),
            "install_hint": cls.install_hint,
            "params": cls.schema.describe(),
        }
