"""The jobs of a Snakemake dry run, read from its printed job descriptions."""

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: str  # as printed: "experiment=tiny, loss=triplet, trial=1"; "" for none
    threads: int
    resources: dict = field(hash=False)  # name -> printed value (str)
    local: bool  # runs in Snakemake's own process: a localrule, or a rule without outputs such as `all`


def planned_jobs(output: str) -> list[Job]:
    """Every job a dry run's stdout describes (``snakemake -n``, in Snakemake 9's layout)."""
    jobs = []
    for local, rule, block in re.findall(r"^(local)?rule (\w+):\n((?:    .*\n)+)", output, flags=re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append(
            Job(
                rule=rule,
                wildcards=fields.get("wildcards", ""),
                threads=int(fields.get("threads", 1)),
                resources=resources,
                local=bool(local) or "output" not in fields,
            )
        )
    return jobs
