"""The key that pseudonymises clients in the statistics and the rate limit (#14.6).

An empty or short key turns every pseudonym into an unkeyed hash of an IPv4 address,
which anyone can reverse by trying all 2^32.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kiisrv import privacy


def test_a_broken_key_file_is_replaced_by_a_whole_key(tmp_path: Path) -> None:
    """#14.6: a crash between create and write left an empty key, and every pseudonym
    became an unkeyed hash of the address."""
    (tmp_path / privacy.KEY_FILE).write_text("")
    key = privacy.load_key(tmp_path)
    assert len(key) == 32
    assert privacy.pseudonym(key, "192.0.2.1") != privacy.pseudonym(b"", "192.0.2.1")
    (tmp_path / privacy.KEY_FILE).write_text("abcd")  # too short to be a key
    assert len(privacy.load_key(tmp_path)) == 32


def test_processes_starting_at_once_agree_on_one_whole_key(tmp_path: Path) -> None:
    """Eight processes race for the first start: each reads a whole key, the same one."""
    code = (
        "import sys; from pathlib import Path; from kiisrv import privacy; "
        "print(privacy.load_key(Path(sys.argv[1])).hex())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(8)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(bytes.fromhex(keys.pop().decode())) == 32
    assert [p.name for p in tmp_path.iterdir()] == [privacy.KEY_FILE]
