"""critic.py -- what a GenRM's answer means: its verdict, read from the critique, and the reward it is trained on.

    parse_index(text, n_steps)           strict: -1 or 0..n-1 from the last \\boxed{}, else None (--verdict-parse strict)
    parse_official(text)                 the recipe's: int() of the last \\boxed{}, no range check (official)
    vote(texts, n_steps, how)            one verdict from k critiques (official: raw-string majority)
    genrm_reward(pred, target, n_steps)  the FAPO-Critic reward: outcome +1/-1, plus -|t - t*|/n when both flag
    critic_rewards / critic_batch_metrics   a batch of GenRM rollouts scored (the last 300 characters), and rates

A room of its own: pure functions of text, apart from genrm.py's judges (which run a GenRM and call these),
so the contract of a critique reads in one place. Model output is untrusted: parsed, never executed.
"""
import re

from data import Row
from verifier import last_boxed

# ---- verdict ----

_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "٣"


def parse_index(text: str, n_steps: int) -> int | None:
    """The last \\boxed{} as a strict integer: -1 or 0..n_steps-1; anything else is None.

    Never executed: the official code runs the box content as Python, but model output is untrusted text. Spaces
    around the number are allowed ("\\boxed{ 3 }"); "3.0", "1+2", "paragraph 3", "" are not.
    """
    content = last_boxed(text)
    if content is None or not _INT.fullmatch(content := content.strip()):
        return None
    # more digits than n_steps has is out of range: never hand int() a huge digit string (it raises
    # past 4300 digits, leading zeros included)
    digits = content.lstrip("+-").lstrip("0") or "0"
    if len(digits) > len(str(max(n_steps, 1))):
        return None
    k = -int(digits) if content[0] == "-" else int(digits)
    return k if k == -1 or 0 <= k < n_steps else None


VERDICT_PARSES = ("official", "strict")  # --verdict-parse


def parse_official(text: str) -> int | None:
    """The official recipe's policy-time reading (reward_fn_reasoning.py): int() of the last \\boxed{} of the
    whole critique, no range check (99 and -5 flag); None where int() raises ("3.0", "1+2", "", no box),
    which the recipe leaves unflagged (+1, as clean). int() parses text, it runs nothing; past 4300 digits
    it raises too. (The remote recipe and the FAPO repo run the box as a Python expression; here it is only
    read as an integer.)"""
    box = last_boxed(text)
    if box is None:
        return None
    try:
        return int(box)
    except ValueError:
        return None


def official_vote(answers: list) -> str | None:
    """Counter(answers).most_common(1) over raw strings, as the official eval script votes: None is no vote,
    "3" and "03" differ, and among tied counts the string seen first wins."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.get) if counts else None  # max keeps the first of equal counts


def vote(texts: list[str], n_steps: int, how: str = "strict") -> tuple[int | None, str]:
    """(index, the critique it came from) from k critiques of one solution. official: the stripped box strings
    voted (official_vote), then parse_official of the winner (a winning "3.0" gives None even if "2" had
    votes); strict: majority_vote of parse_index (ties: the smallest index)."""
    if how == "official":
        boxes = [b.strip() if (b := last_boxed(t)) is not None else None for t in texts]
        win = official_vote(boxes)
        text = texts[boxes.index(win)] if win is not None else texts[0]
        return (parse_official(text) if win is not None else None), text
    indices = [parse_index(t, n_steps) for t in texts]
    index = majority_vote(indices)
    return index, texts[indices.index(index)] if index in indices else texts[0]


# ---- reward ----


def genrm_reward_parts(pred: int | None, target: int, n_steps: int) -> tuple[float, float]:
    """(outcome, process) with outcome + process = genrm_reward. Process is 0 unless both say flawed."""
    if pred is None:
        return -1.0, 0.0
    if (pred == -1) != (target == -1):
        return -1.0, 0.0
    if target == -1:
        return 1.0, 0.0
    return 1.0, -abs(pred - target) / n_steps


def genrm_reward(pred: int | None, target: int, n_steps: int) -> float:
    """The official GenRM reward: unparseable -1; wrong verdict -1; clean-clean +1; else 1 - |t-t*|/n."""
    outcome, process = genrm_reward_parts(pred, target, n_steps)
    return outcome + process


REWARD_WINDOW = 300  # the official GenRM reward reads text[-300:] (as the rule verifier does)


def critic_rewards(rows: list[Row], texts: list[str], window: int | None = REWARD_WINDOW) -> tuple[list, dict, list]:
    """GenRM rollouts scored against their rows (label = ground_truth, n = extra_info.total_steps):
    the rewards, sums for logging (outcome, process, verdicts right, parse failures, |t - t*|), and
    the parsed verdicts. As officially, only the last `window` characters are read (a box further back, or
    one the window cuts, is no verdict); window=None: the whole text."""
    preds, rewards, sums = [], [], {"n": len(rows), "outcome": 0.0, "process": 0.0, "verdict_right": 0, "parse_fail": 0,
                                    "loc_err": 0.0, "both_flawed": 0}
    for r, t in zip(rows, texts):
        n = r.extra_info["total_steps"]
        pred = parse_index(t[-window:] if window else t, n)
        preds.append(pred)
        outcome, process = genrm_reward_parts(pred, r.ground_truth, n)
        rewards.append(outcome + process)
        sums["outcome"] += outcome
        sums["process"] += process
        sums["parse_fail"] += pred is None
        sums["verdict_right"] += outcome > 0
        if pred is not None and pred != -1 and r.ground_truth != -1:
            sums["both_flawed"] += 1
            sums["loc_err"] += abs(pred - r.ground_truth)
    return rewards, sums, preds


def critic_batch_metrics(s: dict) -> dict:
    """Rates from (summed) critic_rewards sums: reward parts, verdict accuracy, parse failures, mean |t - t*|."""
    n = max(s["n"], 1)
    return {"outcome": s["outcome"] / n, "process": s["process"] / n, "verdict_acc": s["verdict_right"] / n,
            "parse_fail": s["parse_fail"] / n, "loc_err": s["loc_err"] / max(s["both_flawed"], 1)}


def majority_vote(indices: list) -> int | None:
    """Most common verdict among k samples (parseable ones first; ties -> the smallest index)."""
    valid = [i for i in indices if i is not None]
    if not valid:
        return None
    return min(set(valid), key=lambda i: (-valid.count(i), i))
