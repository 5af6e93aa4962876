import pickle
import posixpath

import dagster as dg
import pyarrow as pa

from whisper_pipeline.resources.storage import StorageResource


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition as one Parquet file, replaced atomically on re-materialization.

    The file is ``ROOT/<area>/<asset name>/date=<partition key>/part-0.parquet`` (hive layout).
    Reports ``dagster/row_count`` and ``path`` on every output.

    Attributes:
        storage: The storage root.
        area: Top folder under the root: ``tables`` for published tables, ``staging`` for
            internal ones.
    """

    storage: dg.ResourceDependency[StorageResource]
    area: str = "tables"

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        """Write ``obj`` as the partition's file; raises ``TypeError`` for non-Arrow outputs."""
        if not isinstance(obj, pa.Table):
            raise TypeError(f"expected a pyarrow.Table for {context.asset_key}, got {type(obj)}")
        name = context.asset_key.path[-1]
        uri = self.storage.get().replace_partition(name, context.partition_key, obj, self.area)
        context.add_output_metadata(
            {"dagster/row_count": obj.num_rows, "path": dg.MetadataValue.path(uri)}
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        """Read the upstream asset's partition."""
        name = context.asset_key.path[-1]
        return self.storage.get().read_partition(name, context.asset_partition_key, self.area)


class StagingPickleIOManager(dg.ConfigurableIOManager):
    """Keeps op outputs (the small shard manifests) as pickles in the run's staging folder.

    ``ROOT/staging/<partition>/<run id>/io/<step key>/<output>[.<mapping key>].pkl``, written
    atomically. Dagster's default IO manager pickles into ``$DAGSTER_HOME/storage`` on the host
    of the run, which a step on another machine (a Celery worker, a Kubernetes pod) cannot read;
    this one is under the storage root every step already reaches. The folder goes with the
    run's staging: ``write_tables`` removes it when it publishes, ``remove_stale_runs`` after a
    failure.

    Attributes:
        storage: The storage root.
    """

    storage: dg.ResourceDependency[StorageResource]

    def _path(self, partition_key: str | None, output: dg.OutputContext) -> str:
        store = self.storage.get()
        run_dir = store.staging_dir(partition_key or "unpartitioned", output.run_id)
        name = output.name + (f".{output.mapping_key}" if output.mapping_key else "")
        return posixpath.join(run_dir, "io", output.step_key, f"{name}.pkl")

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        """Pickle ``obj`` to the output's path."""
        path = self._path(context.partition_key if context.has_partition_key else None, context)
        self.storage.get().write_bytes_atomic(path, pickle.dumps(obj))

    def load_input(self, context: dg.InputContext) -> object:
        """Unpickle the upstream output (same run and partition).

        Raises:
            FileNotFoundError: The upstream step's output is not in this run's staging folder.
        """
        partition_key = context.partition_key if context.has_partition_key else None
        path = self._path(partition_key, context.upstream_output)
        return pickle.loads(self.storage.get().fs.cat_file(path))
