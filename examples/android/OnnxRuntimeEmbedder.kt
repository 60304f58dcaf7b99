// all-MiniLM-L6-v2 sentence embeddings with ONNX Runtime (bundle: model.onnx, int64 inputs [1, 128]).
// Gradle: implementation("com.microsoft.onnxruntime:onnxruntime-android:1.31.1")
package com.example.edgeopt

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import android.content.Context
import java.nio.LongBuffer

class OnnxRuntimeEmbedder(context: Context, asset: String = "model.onnx", threads: Int = 4) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession

    init {
        val options = OrtSession.SessionOptions().apply {
            setIntraOpNumThreads(threads)  // the profile's compute.threads; bench.sh --threads measures others
            setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
        }
        session = env.createSession(context.assets.open(asset).readBytes(), options)
    }

    /** Ids from the model's tokenizer, padded to SEQ_LEN: returns sentence_embedding (float32 [1, 384]). */
    fun embed(inputIds: LongArray, attentionMask: LongArray, tokenTypeIds: LongArray): FloatArray {
        val shape = longArrayOf(1, SEQ_LEN.toLong())
        val feeds = mapOf(
            "input_ids" to OnnxTensor.createTensor(env, LongBuffer.wrap(inputIds), shape),
            "attention_mask" to OnnxTensor.createTensor(env, LongBuffer.wrap(attentionMask), shape),
            "token_type_ids" to OnnxTensor.createTensor(env, LongBuffer.wrap(tokenTypeIds), shape),
        )
        try {
            session.run(feeds, setOf("sentence_embedding")).use { result ->
                val out = (result.get("sentence_embedding").get() as OnnxTensor).floatBuffer
                return FloatArray(out.remaining()).also { out.get(it) }
            }
        } finally {
            feeds.values.forEach { it.close() }
        }
    }

    override fun close() = session.close()

    companion object {
        const val SEQ_LEN = 128  // the profile's seq_len: the graph's fixed input length
        const val DIM = 384
    }
}
