"""The models the conformance matrix runs on: a toy MLP, a tiny random BERT, the real MiniLM."""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("mlp", "tiny_bert", "minilm")
SENTENCES = ["a gripping and beautifully shot film", "dull.", "the plot never quite comes together, sadly"]


class ToyMLP(nn.Module):
    """A plain torch model (no transformers): PEFT methods must work on these too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = nn.Linear(16, 32)
        self.lin1 = nn.Linear(32, 32)
        self.classifier = nn.Linear(32, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803 - PEFT's own tests call it X
        return self.classifier(torch.relu(self.lin1(torch.relu(self.lin0(X)))))


def build_base(kind: str, folders: dict[str, str]) -> nn.Module:
    """A fresh base model of ``kind`` (deterministic head init)."""
    if kind == "mlp":
        return ToyMLP().eval()
    from hf_lowdata.models import load_for_classification

    return load_for_classification(folders[kind], 2, ["neg", "pos"], seed=0).eval()


def make_inputs(kind: str, folders: dict[str, str]) -> dict[str, torch.Tensor]:
    if kind == "mlp":
        return {"X": torch.randn(4, 16, generator=torch.Generator().manual_seed(1))}
    from hf_lowdata.models import load_tokenizer

    return dict(load_tokenizer(folders[kind])(SENTENCES, padding=True, return_tensors="pt"))


def cast_inputs(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float inputs (the MLP's features) to ``dtype``; token ids stay integers."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return (out if isinstance(out, torch.Tensor) else out.logits).float()
