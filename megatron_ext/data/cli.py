"""How the data tools fail: one line naming the file or record, nothing half-written.

Exit codes: 0 = done; 2 = refused (bad input: the message says why); 1 = a write failed (disk
full): the message names the file.
"""

from __future__ import annotations

import sys
from typing import Callable

from megatron_ext.data.indexed import WriteError


def run_tool(action: Callable[[], None]) -> int:
    try:
        action()
        return 0
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # InputError and MDSError are ValueErrors; OSError: an unreadable input
        print(f"error: {e}", file=sys.stderr)
        return 2
