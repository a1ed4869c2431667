"""`python -m clickwatch.dashboard`: a dashboard of its own, following a store another `clickwatch up` writes.

Its settings come from the CLICKWATCH_* environment (docs/settings.md, those used by the dashboard). Served as
`clickwatch up` serves its own, X-Forwarded-For included: read only from the proxies CLICKWATCH_FORWARDED_ALLOW_IPS
names.
"""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from clickwatch.core.settings import ENV_PREFIX
from clickwatch.dashboard.main import InsecureListen
from clickwatch.dashboard.server import uvicorn_config
from clickwatch.dashboard.settings import DashboardSettings


def main() -> int:
    """Serve until Ctrl-C; exit 2 with one line when the settings cannot be used."""
    try:
        config = uvicorn_config(DashboardSettings(), log_level="info")
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'_'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        print(f"clickwatch dashboard: {problems}", file=sys.stderr)
        return 2
    except InsecureListen as exc:
        print(f"clickwatch dashboard: {exc}", file=sys.stderr)
        return 2
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
