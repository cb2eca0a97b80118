"""What several test modules share: configs, runs, servers, commands, corpora and pages. A test module imports
its helpers from here, never from another test module or from conftest.py (tests/test_test_layout.py checks);
fixtures used by several modules are in tests/conftest.py."""
