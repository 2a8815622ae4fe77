"""Creates an API key for a tenant (the tenant too, if new) and prints it; only its hash is stored.

python -m ops.create_api_key acme-platform
"""

from __future__ import annotations

import argparse

from fakescope.db.engine import new_session
from fakescope.service.tenants import create_api_key
from fakescope.settings import get_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tenant", help="tenant name")
    args = p.parse_args()
    with new_session(get_settings().sqlalchemy_url) as session:
        tenant, key = create_api_key(session, tenant_name=args.tenant)
    print(f"tenant {tenant.name} ({tenant.id}): {key}")


if __name__ == "__main__":
    main()
