// all-MiniLM-L6-v2 sentence embeddings with LiteRT (bundle: model.tflite, signature "seq_128",
// int32 inputs [1, 128]: litert-torch stores 64-bit model I/O as 32-bit). The bundle also has "seq_32" for texts of
// at most 32 tokens (inputs [1, 32], ~4x faster): use the smallest signature that holds the text, as the bundle's
// README.md does (manifest.json artifacts[0].lengths.signatures lists them).
// Gradle: implementation("com.google.ai.edge.litert:litert:2.3.0")
// Two variants: the Interpreter API (CPU, the classic TFLite API) and the CompiledModel API (CPU/GPU/NPU).
package com.example.edgeopt

import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import org.tensorflow.lite.Interpreter

const val SIGNATURE = "seq_128"  // the full-length bucket
const val SEQ_LEN = 128
const val DIM = 384

/** Interpreter API: named signature inputs/outputs, direct ByteBuffers for the outputs. */
class LiteRtInterpreterEmbedder(context: Context, asset: String = "model.tflite", threads: Int = 4) : AutoCloseable {
    private val interpreter: Interpreter

    init {
        val fd = context.assets.openFd(asset)  // needs the asset stored uncompressed (noCompress "tflite")
        val model = fd.createInputStream().channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
        interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    }

    fun embed(inputIds: IntArray, attentionMask: IntArray, tokenTypeIds: IntArray): FloatArray {
        val inputs = mapOf<String, Any>(
            "input_ids" to arrayOf(inputIds),            // int32 [1, 128]
            "attention_mask" to arrayOf(attentionMask),  // int32 [1, 128]
            "token_type_ids" to arrayOf(tokenTypeIds),   // int32 [1, 128]
        )
        val embedding = ByteBuffer.allocateDirect(DIM * 4).order(ByteOrder.nativeOrder())
        val hidden = ByteBuffer.allocateDirect(SEQ_LEN * DIM * 4).order(ByteOrder.nativeOrder())
        val outputs = mutableMapOf<String, Any>("sentence_embedding" to embedding, "last_hidden_state" to hidden)
        interpreter.runSignature(inputs, outputs, SIGNATURE)
        embedding.rewind()
        return FloatArray(DIM).also { embedding.asFloatBuffer().get(it) }
    }

    override fun close() = interpreter.close()
}

/** CompiledModel API: buffers created by signature input/output name. */
class LiteRtCompiledModelEmbedder(context: Context, asset: String = "model.tflite", threads: Int = 4) : AutoCloseable {
    private val model: CompiledModel

    init {
        val options = CompiledModel.Options(Accelerator.CPU).apply {
            cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
        }
        model = CompiledModel.create(context.assets, asset, options)
    }

    fun embed(inputIds: IntArray, attentionMask: IntArray, tokenTypeIds: IntArray): FloatArray {
        val inputs = mapOf(
            "input_ids" to model.createInputBuffer("input_ids", SIGNATURE).apply { writeInt(inputIds) },
            "attention_mask" to model.createInputBuffer("attention_mask", SIGNATURE).apply { writeInt(attentionMask) },
            "token_type_ids" to model.createInputBuffer("token_type_ids", SIGNATURE).apply { writeInt(tokenTypeIds) },
        )
        val outputs = mapOf(
            "sentence_embedding" to model.createOutputBuffer("sentence_embedding", SIGNATURE),
            "last_hidden_state" to model.createOutputBuffer("last_hidden_state", SIGNATURE),
        )
        model.run(inputs, outputs, SIGNATURE)
        val embedding = outputs.getValue("sentence_embedding").readFloat()  // float32 [1, 384]
        (inputs.values + outputs.values).forEach { it.close() }
        return embedding
    }

    override fun close() = model.close()
}
