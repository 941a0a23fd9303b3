"""An example third-party ovis plugin, kept small enough to read in one sitting."""
