"""The built-in default: synthetic scenes written in the released formats of real data sets."""
