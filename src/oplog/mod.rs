// filled in by the oplog module
