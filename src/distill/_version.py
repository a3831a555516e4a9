"""The package version, in a module of its own so that any layer can name it without importing the
package root (whose public names sit above every layer)."""

__version__ = "0.1.0"
