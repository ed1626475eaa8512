"""Print what a sync did and what the Braze sandbox holds (used by scripts/quickstart)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from braze_sandbox.testing import SandboxClient


def main() -> None:
    """Show the run report's counts, the sandbox's user count and one exported profile."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandbox", required=True, help="sandbox URL")
    parser.add_argument("--api-key", required=True, help="sandbox API key")
    parser.add_argument("--report", required=True, type=Path, help="target-braze run report")
    parser.add_argument("--profile", help="external_id of a profile to show")
    args = parser.parse_args()

    report = json.loads(args.report.read_text())
    sandbox = SandboxClient(args.sandbox, args.api_key)
    print(
        f"This run: {report['records_in']} changed customers read, "
        f"{report['records_accepted']} accepted by Braze in {report['requests']} requests, "
        f"{report['unchanged']} unchanged (Braze already holds their values: not sent), "
        f"{report['rejected']} rejected, {report['data_points']} data points "
        f"(outcome: {report['outcome']})."
    )
    print(f"Braze sandbox now holds {len(sandbox.profiles())} user profiles.")
    if args.profile:
        print(f"Profile {args.profile} as /users/export/ids returns it:")
        print(json.dumps(sandbox.profile(args.profile), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
