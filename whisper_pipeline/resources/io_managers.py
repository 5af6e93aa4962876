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
        job_name: The job of every asset, named in the error when an upstream partition is
            missing (set where the definitions are assembled).
    """

    storage: dg.ResourceDependency[StorageResource]
    area: str = "tables"
    job_name: str = ""

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        """Write ``obj`` as the partition's file; raises ``TypeError`` for non-Arrow outputs."""
        if not isinstance(obj, pa.Table):
            raise TypeError(f"expected a pyarrow.Table for {context.asset_key}, got {type(obj)}")
        name = context.asset_key.path[-1]
        # The asset's own partition, not the run's ``partition_key``: runs of a backfill launched
        # from the UI carry a partition range (one day each) instead of a partition tag.
        key = context.asset_partition_key
        uri = self.storage.get().replace_partition(name, key, obj, self.area)
        context.add_output_metadata(
            {"dagster/row_count": obj.num_rows, "path": dg.MetadataValue.path(uri)}
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        """Read the upstream asset's partition.

        Raises:
            dagster.Failure: The upstream partition was never materialized (no retry: only
                materializing it helps). The message names the asset, the partition and what to
                launch instead.
        """
        name = context.asset_key.path[-1]
        key = context.asset_partition_key
        store = self.storage.get()
        try:
            return store.read_partition(name, key, self.area)
        except FileNotFoundError as error:
            raise dg.Failure(
                f"{name} has not been materialized for partition {key} (no"
                f" {store.uri(store.table_dir(name, key, self.area))}): materialize {name}"
                f" together with what needs it for {key} (select both, or launch the job"
                f" {self.job_name or 'of every asset'} for that partition)",
                allow_retries=False,
            ) from error


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

    def _path(self, step: dg.StepExecutionContext | None, output: dg.OutputContext) -> str:
        store = self.storage.get()
        # The run's one day, whether its tags name a partition or a one-day range (the UI's
        # backfills); the folder then goes with the partition's staging.
        partition_key = step.partition_key if step is not None and step.has_partitions else None
        run_dir = store.staging_dir(partition_key or "unpartitioned", output.run_id)
        name = output.name + (f".{output.mapping_key}" if output.mapping_key else "")
        return posixpath.join(run_dir, "io", output.step_key, f"{name}.pkl")

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        """Pickle ``obj`` to the output's path."""
        path = self._path(context.step_context, context)
        self.storage.get().write_bytes_atomic(path, pickle.dumps(obj))

    def load_input(self, context: dg.InputContext) -> object:
        """Unpickle the upstream output (same run and partition).

        Raises:
            FileNotFoundError: The upstream step's output is not in this run's staging folder.
        """
        path = self._path(context.step_context, context.upstream_output)
        return pickle.loads(self.storage.get().fs.cat_file(path))
