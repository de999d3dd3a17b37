//! The lab's own little internet: DNS, web and package hosts, a mining pool, a CA.
