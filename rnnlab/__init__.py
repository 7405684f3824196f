"""rnnlab: recurrent neural networks on PyTorch, built as the lecture builds them.

    s^t = h(x^t, s^{t-1}, y^{t-1})      the cell (state update)
    y^t = f(s^t)                         the readout

Shape legend, used in every shape comment and error message:
    B batch, T time, I input size, H hidden (state) size, O output / feedback size,
    L layers, K gates. Batch first everywhere: (B, T, I) in, (B, T, H) out.
"""

from .cells import (
    LADDER,
    Cell,
    ForgetGatedCell,
    GRUCell,
    InputGatedCell,
    LayerNormLSTMCell,
    LSTMCell,
    OutputFeedbackCell,
    PeepholeLSTMCell,
    ProjectedLSTMCell,
    ResidualCell,
    VanillaCell,
)
from .init import (
    L1L2,
    Constraints,
    Init,
    MaxNorm,
    NonNeg,
    Regularizers,
    UnitNorm,
    apply_constraints,
    regularization_loss,
)
from .interop import from_torch, from_torch_cell, to_torch, to_torch_cell
from .kernels.native import torch_mode
from .linear import Linear
from .models import EncoderDecoder, Ensemble, RecurrentModel, SequenceToVector, VectorToSequence, last_valid
from .preprocessing import MLP, EmbeddingFeedback, RawFeedback, SoftmaxFeedback, choose_token
from .runners import Bidirectional, Recurrent, Stacked, reverse_padded, shift_right

__version__ = "0.1.0"

__all__ = [
    "Cell", "VanillaCell", "ResidualCell", "InputGatedCell", "ForgetGatedCell", "LSTMCell", "GRUCell",
    "OutputFeedbackCell", "PeepholeLSTMCell", "LayerNormLSTMCell", "ProjectedLSTMCell", "LADDER", "torch_mode",
    "Init", "MaxNorm", "NonNeg", "UnitNorm", "L1L2", "Constraints", "Regularizers", "apply_constraints",
    "regularization_loss",
    "Recurrent", "Stacked", "Bidirectional", "shift_right", "reverse_padded",
    "Linear", "MLP", "RawFeedback", "SoftmaxFeedback", "EmbeddingFeedback", "choose_token",
    "RecurrentModel", "SequenceToVector", "Ensemble", "VectorToSequence", "EncoderDecoder", "last_valid",
    "to_torch", "from_torch", "to_torch_cell", "from_torch_cell",
]
