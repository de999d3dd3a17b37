//! The scenario's cpuminer stand-in and the lab's Stratum v1 pool.
