"""One torchrun launch for every test that runs code of its own on 2 ranks (each launch costs ~10 s of CPU
on the 2-core machine before any work: torch and transformers imported in three processes). The jobs run one
after the other in the same two workers, each writing under OUT/JOB/, and the tests read what they wrote
(the session fixture conftest.two_ranks). The last job kills the run on purpose (a fault point)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402

torch.set_num_threads(1)


def main(out, family_dirs):
    import test_checkpoint_integrity
    import test_families
    import test_fsdp
    import test_train
    jobs = [("equal_one", test_train.two_rank_job), ("families", lambda d: test_families.two_rank_job(d, family_dirs)),
            ("fallback", test_checkpoint_integrity.two_rank_job), ("killed", test_fsdp.two_rank_job)]
    for name, job in jobs:  # "killed" ends the process at its fault point (os._exit): it must be last
        path = os.path.join(out, name)
        os.makedirs(path, exist_ok=True)
        job(path)
        torch.distributed.barrier()
        if int(os.environ.get("RANK", 0)) == 0:
            open(os.path.join(path, "done"), "w").close()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
