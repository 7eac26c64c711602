"""`llm.engine: transformers`: a Hugging Face model in-process (CPU or CUDA), peft on top for the adapter."""

from __future__ import annotations

import gc
import queue
import threading
from typing import Generator

from ..errors import EngineUnavailable
from .base import READY, GenerationParams, Readiness, resolve_model


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

            from ..adapter import validate_adapter

            validate_adapter(settings.path(llm.adapter), self.model.config)
            self.model = PeftModel.from_pretrained(self.model, str(settings.path(llm.adapter))).eval()
        self.n_ctx = min(llm.n_ctx, getattr(self.model.config, "max_position_embeddings", llm.n_ctx))
        self._lock = threading.Lock()
        self.token_timeout_s = llm.timeout_s  # the longest wait for the next token before giving up

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        """generate() runs in a worker thread feeding a streamer; its failure reaches the caller as EngineUnavailable.

        Stop strings end generation inside transformers (`stop_strings`); a stop, a disconnect (params.cancel) or
        an error here stops the worker at its next token, and the lock is always released.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        model = self.model
        if model is None:
            raise EngineUnavailable("transformers engine: the model is closed")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=self.token_timeout_s)
        halt = threading.Event()

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stop = halt.is_set() or params.cancel.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        sample = params.temperature > 0
        kwargs = dict(input_ids=ids, max_new_tokens=params.max_tokens, streamer=streamer, do_sample=sample,
                      **({"eos_token_id": self.end_ids} if self.end_ids else {}),
                      repetition_penalty=params.repeat_penalty, pad_token_id=self.tokenizer.eos_token_id,
                      stopping_criteria=StoppingCriteriaList([Halt()]))
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            torch.manual_seed(params.seed)
        outcome: dict = {}

        def work():
            try:
                with torch.no_grad():
                    outcome["new_tokens"] = model.generate(**kwargs).shape[1] - ids.shape[1]
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                outcome["error"] = e
                streamer.end()  # wakes the reader, which would otherwise wait for a token that never comes

        with self._lock:
            worker = threading.Thread(target=work, daemon=True, name="hf-generate")
            worker.start()
            text, sent, stopped = "", 0, False
            try:
                for delta in streamer:
                    text += delta
                    at = min((text.find(s) for s in params.stop if s in text), default=-1)
                    if at >= 0:
                        stopped = True
                        if at > sent:
                            yield text[sent:at]  # what came before the stop string in this delta is kept
                        break
                    yield delta
                    sent = len(text)
            except queue.Empty:
                raise EngineUnavailable(f"transformers engine: no token within {self.token_timeout_s:.0f} s") from None
            finally:
                halt.set()
                worker.join(timeout=self.token_timeout_s)
        if "error" in outcome:
            e = outcome["error"]
            raise EngineUnavailable(f"transformers engine: generation failed: {type(e).__name__}: {e}") from e
        return "length" if not stopped and outcome.get("new_tokens", 0) >= params.max_tokens else "stop"

    def ready(self) -> Readiness:
        return READY if self.model is not None else Readiness(False, "transformers engine: the model is closed")

    def close(self) -> None:
        """Drop the model (and its GPU memory); a generation in flight finishes first."""
        got = self._lock.acquire(timeout=self.token_timeout_s)
        try:
            self.model = None
        finally:
            if got:
                self._lock.release()
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
