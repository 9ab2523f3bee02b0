//! Call recording: subscribes to a room like a participant and writes its tracks to
//! files that standard players open. Not built yet.
