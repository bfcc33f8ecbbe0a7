"""Recipe for the built-in `demo` model: see training/demo/README.md."""
