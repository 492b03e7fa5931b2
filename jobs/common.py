"""What every command line shares: S3 options, logging, and the `error: …` exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.lease import LeaseConfig, LeaseHeld
from pipeline.runs import EXIT_INVALID_INPUT, EXIT_LEASE_HELD
from pipeline.storage import S3Config
from pipeline.uris import redact_text


class UsageError(Exception):
    """Invalid input found before any work: printed as `error: …`, exit code 2."""


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("object storage")
    group.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint, http(s)://host[:port] (credentials always come from the AWS chain)",
    )
    group.add_argument(
        "--s3-region", default=os.environ.get("AWS_REGION"), help="S3 region (default: AWS's)"
    )


def add_lease_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("table lease (one writer per table)")
    group.add_argument(
        "--lease-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another writer of the table to finish, then exit 4",
    )
    group.add_argument(
        "--lease-ttl",
        type=float,
        default=LeaseConfig.ttl_s,
        metavar="SECONDS",
        help="a lease its holder stopped renewing (a killed run) expires after this",
    )


def lease_config(args: argparse.Namespace) -> LeaseConfig:
    try:
        return LeaseConfig(ttl_s=args.lease_ttl, wait_s=args.lease_wait)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def lease_held(exc: LeaseHeld) -> int:
    """Print `error: <who holds the lease>` on stderr; returns exit code 4."""
    fail(exc)
    return EXIT_LEASE_HELD


def s3_config(args: argparse.Namespace) -> S3Config:
    """The S3 settings the command line gives; a malformed endpoint is a UsageError."""
    try:
        return S3Config(endpoint_url=args.s3_endpoint_url, region=args.s3_region)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines (human output) on stderr; stdout is kept for machine output."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def fail(message: object) -> int:
    """Print `error: <message>` (one line, redacted) on stderr; returns exit code 2."""
    text = " ".join(str(message).split()) if str(message).strip() else "invalid input"
    print(f"error: {redact_text(text)}", file=sys.stderr)
    return EXIT_INVALID_INPUT
