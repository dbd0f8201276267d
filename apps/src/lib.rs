//! Example applications linked against the fragnet socket library.
