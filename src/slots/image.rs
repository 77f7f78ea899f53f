//! Image slots (placeholder, replaced below).
