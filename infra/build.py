"""infra/build.py -- a run's parts from its flags: the tokenizer, the task and its rows, the sharded policy, the judges.

    tok = tokenizer(cfg); task = make_task(cfg)
    rows, ids, test, test_ids = encode(task, tok, cfg, world)   # over-long prompts dropped and counted
    model = load_model(cfg, world, dtype, tok)                   # FSDP2-sharded, never whole on one rank
    judge, eval_judge = make_judges(cfg, world, task, dtype)     # the step's GenRM, the eval's judge

Why apart (skip on first read): building things from flags is plumbing; train.setup reads as the list of them.
"""
from transformers import AutoTokenizer

import arith
import data
import genrm
import toy
from infra import fsdp


def tokenizer(cfg):
    return toy.tokenizer() if cfg.model == "toy" else AutoTokenizer.from_pretrained(cfg.model)


def make_task(cfg) -> data.Task:
    kind = "critic" if cfg.task == "genrm" else "policy"
    if cfg.data == "toy":
        return toy.ToyTask(kind, cfg.seed, cfg.eval_prompts, cfg.sft_flawed_share, cfg.toy_regime, cfg.sft_slip_share,
                           test=cfg.test_data)
    if cfg.data == "arith":  # word problems with an exact equation checker (arith.py); test "arith": its held-out split
        return arith.ArithTask(kind, eval_prompts=cfg.eval_prompts, test=cfg.test_data,
                               flawed_share=cfg.sft_flawed_share, level=cfg.arith_level)
    return data.FileTask(kind, cfg.data, None if cfg.test_data == "none" else cfg.test_data, cfg.eval_prompts,
                         sft=cfg.task == "sft")


def load_model(cfg, world, dtype, tokenizer):
    """The policy, sharded. Toy: built from a config (0.5M parameters, seeded); else a local HF dir, read
    shard by shard so that no rank ever holds the whole model (infra/fsdp.load_pretrained)."""
    def configure(model):
        if cfg.context_len:  # e.g. Qwen2.5-Math-7B ships 4096; the official scripts override it to 32768
            model.config.max_position_embeddings = cfg.context_len
        if cfg.grad_checkpointing:  # transformers 5.24 renamed it; 5.17 has only the old name
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    if cfg.model != "toy":
        return fsdp.load_pretrained(cfg.model, world, dtype, offload=cfg.offload, configure=configure)
    model = toy.build_model(tokenizer, cfg.seed)
    configure(model)
    return fsdp.shard(model, world, dtype, offload=cfg.offload)


def encode(task, tokenizer, cfg, world):
    """(train rows, ids, test rows, ids): over-long prompts dropped and counted, never truncated."""
    train, test = task.rows()
    train, train_ids, dropped = task.encode(tokenizer, train, cfg.max_prompt_len, cfg.system_prompt)
    test, test_ids, dropped_test = task.encode(tokenizer, test, cfg.max_prompt_len, cfg.system_prompt)
    if dropped or dropped_test:
        world.say(f"dropped over-long prompts (> {cfg.max_prompt_len} tokens): train {dropped}, test {dropped_test}")
    if not train:
        raise ValueError(f"{cfg.data}: no prompt fits --max-prompt-len {cfg.max_prompt_len}")
    if not test:
        world.say("no test data (--test-data none): nothing will be evaluated")
    return train, train_ids, test, test_ids


def make_judges(cfg, world, task, dtype):
    """(the training judge, the eval judge). The eval measures the flawed ratio with the task's exact checker
    when it has one, else with the training GenRM; a learned GenRM on such a task is audited by the checker.
    The GenRM's sampling as it will decode (unset flags resolved) goes into the printed config: genrm_sampling."""
    if cfg.task == "genrm":
        return None, None
    judge = genrm.make_judge(cfg.genrm, checker=task.checker, world=world, dtype=dtype, max_tokens=cfg.genrm_max_tokens,
                             temperature=cfg.genrm_temperature, top_p=cfg.genrm_top_p, top_k=cfg.genrm_top_k,
                             seed=cfg.seed, context_len=cfg.genrm_context_len,
                             max_tokens_in_flight=cfg.max_tokens_in_flight or None,
                             served_model=cfg.genrm_model or "genrm", concurrency=cfg.genrm_concurrency,
                             timeout=cfg.genrm_timeout, retries=cfg.genrm_retries, prompt_format=cfg.judge_prompt,
                             verdict_parse=cfg.verdict_parse)
    if judge is not None and judge.sampling:
        cfg.genrm_sampling = dict(judge.sampling)
    if task.checker is None:
        return judge, judge
    oracle = genrm.CheckerJudge(task.checker)
    if cfg.genrm not in ("none", "oracle"):
        judge = genrm.AuditedJudge(judge, oracle)
    return judge, oracle
