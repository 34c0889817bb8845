"""Packed low-bit storage of quantized models.

File layout (little endian)::

    b"WBPACK1\\n" | uint32 header length | zlib(JSON header) | payload entries, each byte aligned

Integer weights are stored as unsigned codes ``q - qmin`` at their exact bit width (two 4-bit codes per byte,
four 2-bit codes, 3-bit codes straddling bytes ...), row by row so each output channel can have its own width.
Scales are float32, asymmetric zero points uint8, 16-bit weights as float16 / bfloat16, everything else
(biases, BatchNorm statistics, activation ranges) in its own dtype. Loading rebuilds the quantized model from the
float model and reproduces its outputs exactly.

Every quantized layer type is stored alike (Conv1d, Conv2d, Linear, Embedding: the weight's rows are its output
channels, an Embedding's rows its tokens); a weight-only layer has no activation state to store.

Compressed layers: an unstructured-pruned weight stores a one-bit occupancy mask (``np.packbits``) followed by the
codes (or 16/32-bit floats) of its kept weights only; a channel-pruned weight stores one bit per output channel
followed by the kept rows, and the scales / zero points of kept rows only; a low-rank layer stores its two factors
``lowrank_a`` / ``lowrank_b`` like weights (its ``weight`` is rebuilt as ``A @ B`` when loading).

Nothing in a packed file is executed when it is read (no pickle: a JSON header and raw bytes). The header records
the payload's length and sha256 and the float model's class: a truncated, damaged or edited file, or one packed
from another model, is refused with a :class:`PlanError` naming the file and what does not match (files written
before the hash was recorded are checked by length and shapes).
"""

from workbench.quant.pack.codes import pack_bits, pack_rows, unpack_bits, unpack_rows
from workbench.quant.pack.fileformat import MAGIC, read_header
from workbench.quant.pack.read import load_packed
from workbench.quant.pack.write import PackReport, save_packed

__all__ = [
    "MAGIC",
    "PackReport",
    "load_packed",
    "pack_bits",
    "pack_rows",
    "read_header",
    "save_packed",
    "unpack_bits",
    "unpack_rows",
]
