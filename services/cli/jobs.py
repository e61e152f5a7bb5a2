"""`dim submit`, `dim jobs`, `dim job`: run a prompt and follow it, list jobs, show one job."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from services.cli.common import Subcommands


def cmd_submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from events.inference import Prompt, SamplingParams
    from events.job_log import JobFollower, single, submit_event
    from events.jobs import JobCancelled, JobCompleted, JobFailed
    from events.text import TextAssembler
    from events.work import TokensProduced
    from services.jobs.bounds import check_bounds
    from services.jobs.validation import first_problem, validate

    settings = settings_of(args)
    try:  # checked as the gateway checks every request, before anything is sent
        job = single(
            model=args.model,
            prompt=Prompt(text=args.prompt),
            params=SamplingParams(
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                stop=tuple(args.stop or ()),
                seed=args.seed,
            ),
            owner=args.owner,
            node_id=args.node,
            max_attempts=settings.max_attempts,
        )
        validate(job)
        check_bounds(job, max_prompt_bytes=settings.max_prompt_bytes)
    except ValidationError as exc:
        why, field = first_problem(exc)
        print(f"dim submit: invalid job: {field}: {why}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"dim submit: invalid job: {exc}", file=sys.stderr)
        return 2

    async def go(bus: Bus) -> int:
        await submit_event(bus, job)
        if not args.json:
            print(f"job {job.job_id} submitted", file=sys.stderr)
        text = TextAssembler()
        last = None
        async with JobFollower(bus, job.job_id, replay=True) as events:
            async for envelope in events:
                data = envelope.data
                if isinstance(data, TokensProduced):
                    if data.call is not None:
                        continue  # a tool call's arguments: the job's end has the calls
                    new = text.add(data.offset, data.text)
                    if new and not args.json:
                        sys.stdout.write(new)
                        sys.stdout.flush()
                elif isinstance(data, (JobCompleted, JobFailed, JobCancelled)):
                    last = data
        if args.json:
            print(json.dumps(last.model_dump(mode="json") if last else None))
        elif isinstance(last, JobCompleted):
            if last.output.startswith(text.text):
                sys.stdout.write(last.output[len(text.text) :])
            else:
                print("\n[the answer was regenerated after a retry; final output:]\n" + last.output)
            u = last.usage
            print(
                f"\n\ncompleted ({last.finish_reason})  prompt {u.prompt_tokens} + completion "
                f"{u.completion_tokens} = {u.total_tokens} tokens   job {job.job_id}",
                file=sys.stderr,
            )
        elif isinstance(last, JobFailed):
            print(f"\nfailed ({last.code}): {last.reason}", file=sys.stderr)
        elif isinstance(last, JobCancelled):
            print(f"\ncancelled: {last.reason}", file=sys.stderr)
        return 0 if isinstance(last, JobCompleted) else 1

    return with_bus(args, go)


def cmd_jobs(args: argparse.Namespace) -> int:
    from projections.job_views import newest_views
    from services.render import jobs_table

    async def go(bus: Bus) -> int:
        views = await newest_views(
            bus, lambda v: args.status is None or v.status == args.status, limit=args.limit
        )
        if args.json:
            print_json([v.model_dump(mode="json") for v in views])
        else:
            print(jobs_table(views))
        return 0

    return with_bus(args, go)


def cmd_job(args: argparse.Namespace) -> int:
    from events.job_log import history
    from projections.job_views import read_view
    from services.render import job_detail

    async def go(bus: Bus) -> int:
        view = await read_view(bus, args.job_id)
        events = await history(bus, args.job_id)
        if view is None and not events:
            print(f"dim: no job {args.job_id!r}", file=sys.stderr)
            return 1
        if args.json:
            doc = {
                "job": view.model_dump(mode="json") if view else None,
                "events": [
                    {
                        "seq": s,
                        "id": e.id,
                        "type": e.type,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "data": e.data.model_dump(mode="json"),
                    }
                    for s, e in events
                ],
            }
            print_json(doc)
        else:
            print(job_detail(view, events))
        return 0

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`submit`, `jobs`, `job`."""
    s = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a prompt, stream its tokens, print status and usage",
    )
    s.add_argument("prompt")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int)
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    s.add_argument("--node", help="pin the job to this node id")
    s.add_argument("--owner", default="cli")
    s.add_argument("--json", action="store_true", help="print only the final event as JSON")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("jobs", parents=[common], help="list recent jobs")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--status", choices=["queued", "running", "completed", "failed", "cancelled"])
    add_json_flag(s, "the jobs' views")
    s.set_defaults(fn=cmd_jobs)

    s = sub.add_parser("job", parents=[common], help="show a job and its event history")
    s.add_argument("job_id")
    add_json_flag(s, "the job's view and its events")
    s.set_defaults(fn=cmd_job)
