"""CI speed guard (a plain test, not pytest-benchmark, so it runs under --benchmark-disable): every op's
speed-up over its eager baseline, measured interleaved in this process, must stay above the floor in
bench/speed_floors.json. See bench/speed_guard.py for the method and how to update the floors."""
from speed_guard import format_table, load_floors, run_guard


def test_ops_stay_above_their_speed_floors():
    floors = load_floors()
    rows, failures = run_guard(floors)
    table = format_table(rows)
    print(table)
    assert {r["op"] for r in rows} == set(floors), "every guarded op needs a floor in bench/speed_floors.json"
    assert not failures, f"speed-up below its floor for {failures} (measured twice):\n{table}"
