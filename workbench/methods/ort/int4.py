"""`ort-int4`: weight-only 4-bit with ONNX Runtime's MatMulNBits quantizer.

Each weight MatMul becomes a `MatMulNBits` op holding 4-bit blocks of `block_size` input
values with one fp32 scale (and a 4-bit zero point unless `sym`); the input dimension is
zero-padded to a multiple of the block, so any block size works on any layer. ORT runs it
with a CPU kernel that unpacks blocks on the fly; `accuracy_level` picks the compute type
(4: int8 activations in the dot products, the fast path; 0: fp32).

The export ties SmolLM2's lm_head to the embedding (`MatMul(h, Transpose(embed))`): the
quantizer skips it ("no const weight"), so it stays fp32 (113 MB of 181 MB at block 32).
`lm_head=int8|int4` unties it (a transposed copy of the table becomes its own initializer)
and quantizes it; `embedding` quantizes the embedding Gather too (`GatherBlockQuantized`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Mapping

from ...params import Param, Schema
from .common import ORTMethod, exclude_param

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

BLOCK_SIZES = (16, 32, 64, 128, 256)
LM_HEAD = "/lm_head/MatMul"


class ORTInt4(ORTMethod):
    """Weight-only 4-bit blocks (MatMulNBits) by ONNX Runtime's quantizer, data-free."""

    name = "ort-int4"
    description = (
        "ONNX Runtime weight-only 4-bit (MatMulNBitsQuantizer): blocks of block_size weights with fp32 scales, "
        "sym or asym, accuracy_level 4 = int8 compute; optional 4-bit embedding and 8/4-bit untied lm_head."
    )
    schema = Schema((
        Param("block_size", "choice", 32, choices=BLOCK_SIZES,
              help="Input values per scale. Smaller blocks: more accurate, more scale bytes. SmolLM2 perplexity "
                   "(8 windows): 17.84 at 32 asym, 19.42 at 64, 20.11 at 128 (fp32 ONNX 14.70)."),
        Param("sym", "bool", False, help="Symmetric blocks (no zero point). Asymmetric was more accurate on SmolLM2."),
        Param("accuracy_level", "choice", 4, choices=(0, 1, 2, 3, 4),
              help="Compute type of the MatMulNBits kernel: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                   "(activations quantized per block on the fly: the fastest on CPU)."),
        Param("embedding", "bool", False,
              help="Also quantize the embedding table (Gather -> GatherBlockQuantized, 4-bit). When lm_head stays "
                   "tied, its fp32 copy of the table remains."),
        Param("lm_head", "choice", "fp32", choices=("fp32", "int8", "int4"),
              help="The output projection: fp32 (the quantizer skips a tied lm_head), or untied and quantized "
                   "to 8 or 4 bits. SmolLM2, block 32 asym, 4-bit embedding: int8 head 119 MB / ppl 18.04; "
                   "int4 head 106 MB / 19.65."),
        exclude_param(),
    ))

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401 - its logging setup, fixed below

        from . import runtime

        # Its import calls logging.basicConfig(level=INFO): about 7600 lines per SmolLM2 run otherwise.
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        p = params
        exported = runtime.exported(ctx)
        nodes, notes = self.exclude_nodes(ctx, p["exclude"], exported.model_file)
        ctx.progress("quantize", None, f"MatMulNBits 4-bit, block {p['block_size']}")
        t0 = time.perf_counter()
        out, has_head = self._quantize(ctx, p, exported, nodes, notes)
        quantize_s = time.perf_counter() - t0
        notes.append(f"MatMulNBitsQuantizer: 4-bit blocks of {p['block_size']}, {'sym' if p['sym'] else 'asym'}, "
                     f"accuracy_level {p['accuracy_level']}; embedding {'4-bit' if p['embedding'] else 'fp32'}; "
                     f"lm_head {p['lm_head'] if has_head else 'none (or excluded)'}"
                     + (f"; {len(nodes)} nodes excluded" if nodes else ""))
        return self.finish(ctx, out, runtime.MODEL_FILE, exported, quantize_s=quantize_s, notes=notes,
                           what=f"MatMulNBits 4-bit (block {p['block_size']}, accuracy_level {p['accuracy_level']})")

    @staticmethod
    def _quantize(ctx: BuildContext, p: Mapping[str, Any], exported: Any, nodes: list[str], notes: list[str]) -> tuple[Any, bool]:
        """Quantize the fp32 export into the run's workdir; returns (directory, whether lm_head was there).

        Apart from `build` so that the fp32 graph, the quantizer and the quantized graph (three
        copies of the weights in memory) are gone before the ORT session is created and measured.
        """
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from . import runtime

        model = onnx.load(str(exported.model_file))
        names = {n.name for n in model.graph.node}
        has_head = LM_HEAD in names and LM_HEAD not in nodes
        if has_head and p["lm_head"] != "fp32" and untie(model, LM_HEAD):
            notes.append("lm_head untied from the embedding table (a transposed copy became its own initializer)")
        accuracy = p["accuracy_level"] or None
        common = dict(block_size=p["block_size"], is_symmetric=p["sym"], accuracy_level=accuracy)
        skip = list(nodes) + ([LM_HEAD] if has_head and p["lm_head"] != "int4" else [])
        q = MatMulNBitsQuantizer(model, bits=4, nodes_to_exclude=skip,
                                 op_types_to_quantize=("MatMul", "Gather") if p["embedding"] else ("MatMul",), **common)
        q.process()
        model = q.model.model
        if has_head and p["lm_head"] == "int8":
            q8 = MatMulNBitsQuantizer(model, bits=8, nodes_to_include=[LM_HEAD], op_types_to_quantize=("MatMul",),
                                      **common)
            q8.process()
            model = q8.model.model
        out = runtime.new_workdir(ctx, "ort-int4", exported.path)
        onnx.save_model(model, str(out / runtime.MODEL_FILE))
        return out, has_head

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import ORT_CLASSES, loadable

        p = self.values(params)
        ops = ("MatMul", "Gather") if p["embedding"] else ("MatMul",)
        m = loadable(model_id, self.env)
        cls = ORT_CLASSES.get(m.kind or "", "ORTModelForCausalLM")
        return (
            "import onnx\n"
            "from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer\n"
            f"from optimum.onnxruntime import {cls}{m.hint('ORTModelForFeatureExtraction')}\n\n"
            + m.line()
            + f"{cls}.from_pretrained(model_id, export=True).save_pretrained('ort-int4')\n"
            f"q = MatMulNBitsQuantizer(onnx.load('ort-int4/model.onnx'), bits=4, block_size={p['block_size']}, "
            f"is_symmetric={p['sym']},\n"
            f"                         accuracy_level={p['accuracy_level'] or None}, op_types_to_quantize={ops!r})\n"
            "q.process()\n"
            "q.model.save_model_to_file('ort-int4/model.onnx', use_external_data_format=False)\n"
            f"model = {cls}.from_pretrained('ort-int4')\n"
        )


def untie(model: Any, node_name: str) -> bool:
    """Give the MatMul `node_name` its own weight when it reads a transposed shared initializer
    (`MatMul(h, Transpose(table))`); True if it was tied."""
    from onnx import numpy_helper

    g = model.graph
    node = next(n for n in g.node if n.name == node_name)
    producer = next((n for n in g.node if node.input[1] in n.output), None)
    inits = {i.name: i for i in g.initializer}
    if producer is None or producer.op_type != "Transpose" or producer.input[0] not in inits:
        return False
    table = numpy_helper.to_array(inits[producer.input[0]])
    weight = numpy_helper.from_array(table.T.copy(), name=node_name.strip("/").replace("/", ".") + ".weight_t")
    g.initializer.append(weight)
    node.input[1] = weight.name
    if not any(producer.output[0] in n.input for n in g.node):
        g.node.remove(producer)
    return True
