"""Pure parsers for the text that device tools print (tegrastats, nvpmodel, trtexec, vcgencmd, device files).

They exist so the profiler can record clocks, temperature, power mode and board identity beside every timing
without trusting ad-hoc regexes scattered through the code. Each takes the tool's text and returns plain dicts
(JSON-ready); input that does not have the expected shape raises ValueError naming what was wrong, never a
half-filled result. Each module is tested on real captured output in tests/fixtures/device_output/.

Standard library only: this package travels to the device.
"""
