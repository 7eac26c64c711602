"""`llm.engine: transformers`: a Hugging Face model in-process (CPU or CUDA), peft on top for the adapter."""

from __future__ import annotations

import threading
from typing import Iterator

from ..errors import EngineUnavailable
from .base import GenerationParams, resolve_model


class TransformersEngine:
    name = "transformers"

    def __init__(self, settings, adapter: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        llm = settings.llm
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            model, base = resolve_model(llm.model)
            if str(model).endswith(".gguf"):
                gguf = settings.path(model)
                kw = {"gguf_file": gguf.name}
                src = str(gguf.parent)
            else:
                kw, src = {}, str(model)
            self.tokenizer = AutoTokenizer.from_pretrained(src, **kw)
            if base is not None and base.chat_template:  # its GGUF carries none: serve/bases.py gives it
                self.tokenizer.chat_template = base.chat_template
            self.end_ids = [i for i in {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids(
                base.end_of_turn)} if i is not None] if base is not None and base.end_of_turn else None
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw).to(self.device).eval()
            if kw:  # loaded from the GGUF: name the model by that file, which is what adapters are checked against
                self.model.config._name_or_path = str(gguf)
        except (OSError, ValueError) as e:
            raise EngineUnavailable(f"transformers engine: cannot load {llm.model}: {e}") from e
        if adapter:
            from peft import PeftModel

            from finetune import validate_adapter

            validate_adapter(settings.path(llm.adapter), self.model.config)
            self.model = PeftModel.from_pretrained(self.model, str(settings.path(llm.adapter))).eval()
        self.n_ctx = min(llm.n_ctx, getattr(self.model.config, "max_position_embeddings", llm.n_ctx))
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = params.temperature > 0
        done = threading.Event()  # set when the caller stops reading (or a stop string ends it): generate stops too
        kwargs = dict(input_ids=ids, max_new_tokens=params.max_tokens, streamer=streamer, do_sample=sample,
                      **({"eos_token_id": self.end_ids} if self.end_ids else {}),
                      repetition_penalty=params.repeat_penalty, pad_token_id=self.tokenizer.eos_token_id,
                      stopping_criteria=StoppingCriteriaList([lambda input_ids, scores, **kw: done.is_set()]))
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with self._lock:
            worker = threading.Thread(target=lambda: torch.no_grad()(self.model.generate)(**kwargs), daemon=True)
            worker.start()
            text = ""
            try:
                for delta in streamer:
                    text += delta
                    stop_at = min((text.find(s) for s in params.stop if s in text), default=-1)
                    if stop_at >= 0:
                        break
                    yield delta
            finally:
                done.set()
                worker.join()

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass
