"""firmware.json: derived from the controller sources and the KLL package, never by hand.

The derivation runs on small fixtures always; against the real sources (a
kiibohd/controller git directory, KIISRV_CONTROLLER_GIT, and the kll packages the images
install, KIISRV_KLL_PACKAGES="v0.5.7=DIR,v0.5.0=DIR") it must reproduce the committed
file, and skips without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiisrv.recipe import firmware


def test_capabilities_follow_the_modules_a_script_adds() -> None:
    tree = {
        "Keyboards/k.bash": 'ScanModule="K"\nMacroModule="PixelMap"\nOutputModule="USB"\n',
        "Scan/K/setup.cmake": "AddModule ( Scan Devices/ISSILed )\n# AddModule ( Scan X )\n",
        "Scan/Devices/ISSILed/capabilities.kll": (
            "# ledControl => old_capability( a : 1 );\n"
            "ledControl => LED_control_capability( mode : 1, amount : 1 );\n"
            "ISSI_Chips => ISSI_Chips_define;\n"
        ),
        "Macro/PixelMap/setup.cmake": "AddModule ( Macro PartialMap )\n",
        "Macro/PixelMap/capabilities.kll": "ledTest => T_capability( test : 1, index : 2 );\n",
        "Macro/PartialMap/capabilities.kll": "clearLayers => L_capability();\n",
        "Output/USB/capabilities.kll": "flashMode => F_capability();\n",
    }
    found = firmware._script_capabilities(tree.get, "k.bash")
    assert found == {
        "ledControl": ["mode", "amount"],
        "ledTest": ["test", "index"],
        "clearLayers": [],
        "flashMode": [],
    }
    assert firmware._script_capabilities(tree.get, "missing.bash") is None


def test_function_map_keys_are_read_from_the_map(tmp_path: Path) -> None:
    for name in firmware.FUNCTION_MAPS:
        path = tmp_path / "layouts" / f"{name}.kll"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            'Name = x;\nU"Function1" :: layerShift( 1 );\n# U"Hidden" :: x();\n'
            'U"Next Layer" :: layerRotate( 0 ); # 0 is Next\n'
        )
    assert firmware.derive_function_maps(tmp_path) == {
        name: ["FUNCTION1", "NEXT LAYER"] for name in firmware.FUNCTION_MAPS
    }


def test_the_committed_table_knows_what_the_canary_found() -> None:
    """The facts of issue 13, read back from the derived table."""
    assert firmware.capabilities("v0.5.7", "k-type.bash")["ledTest"] == ["test", "index"]
    assert "ledTest" not in firmware.capabilities("v0.5.0", "k-type.bash")
    assert "storage_control" in firmware.capabilities("v0.5.7", "kira.bash")
    assert "storage_control" not in firmware.capabilities("v0.5.7", "k-type.bash")
    md1 = firmware.capabilities("v0.5.7", "infinity.bash")
    assert "ledControl" not in md1 and "animation" not in md1 and "layerShift" in md1
    assert firmware.capabilities("v0.5.6", "k-type.bash") is None
    keys = firmware.function_map_keys("stdFuncMap")
    assert {"FUNCTION16", "LOCK1", "LATCH3", "NEXT LAYER", "PREV LAYER"} <= keys
    assert len(keys) == 50
    assert firmware.function_map_keys("infinity_ergodox/lcdFuncMap", "v0.5.0") == keys


def test_the_committed_table_is_what_the_sources_give(tmp_path: Path) -> None:
    controller = os.environ.get("KIISRV_CONTROLLER_GIT")
    packages = os.environ.get("KIISRV_KLL_PACKAGES")
    if not controller or not packages:
        pytest.skip(
            "set KIISRV_CONTROLLER_GIT (a kiibohd/controller git directory) and "
            "KIISRV_KLL_PACKAGES (v0.5.7=DIR,v0.5.0=DIR: the kll package folders)"
        )
    argv = [controller, "-o", str(tmp_path / "firmware.json")]
    for item in packages.split(","):
        argv += ["--version", item]
    assert firmware.main(argv) == 0
    derived = json.loads((tmp_path / "firmware.json").read_text())
    assert derived == json.loads(firmware.DATA.read_text())
